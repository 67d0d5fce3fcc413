//! The TCP transport under the shared ureq agent, ours rather than ureq's for what a proxy pays
//! on every request: socket timeouts are set once per connection (they are per-operation limits,
//! so they never change), and a pooled connection's liveness probe is one
//! `recv(MSG_PEEK | MSG_DONTWAIT)` instead of two `FIONBIO` ioctls around a read.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};

/// Opens backend connections: connect within the connect timeout, `TCP_NODELAY`, and the
/// per-operation timeout on every read and write.
#[derive(Debug)]
pub(crate) struct BackendConnector {
    pub connect_timeout: Duration,
    /// Longest wait for one read or one write (`request_timeout`).
    pub io_timeout: Duration,
}

impl Connector<()> for BackendConnector {
    type Out = BackendTransport;

    fn connect(&self, details: &ConnectionDetails, _chained: Option<()>) -> Result<Option<Self::Out>, ureq::Error> {
        let mut last_error = None;
        for addr in details.addrs.iter() {
            match open(addr, self.connect_timeout, self.io_timeout) {
                Ok(stream) => {
                    let config = details.config;
                    let buffers = LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size());
                    let stream = Arc::new(stream);
                    (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
                    return Ok(Some(BackendTransport { stream, buffers }));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(e) if e.kind() == io::ErrorKind::TimedOut => ureq::Error::Timeout(ureq::Timeout::Connect),
            Some(e) => ureq::Error::Io(e),
            None => ureq::Error::ConnectionFailed,
        })
    }
}

fn open(addr: &SocketAddr, connect_timeout: Duration, io_timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(addr, connect_timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    Ok(stream)
}

/// One backend connection, blocking, with fixed per-operation timeouts.
#[derive(Debug)]
pub(crate) struct BackendTransport {
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
}

impl Transport for BackendTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, _timeout: NextTimeout) -> Result<(), ureq::Error> {
        let output = &self.buffers.output()[..amount];
        (&*self.stream).write_all(output).map_err(ureq::Error::Io)
    }

    fn await_input(&mut self, _timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let input = self.buffers.input_append_buf();
        let n = loop {
            match (&*self.stream).read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(ureq::Error::Io)?,
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        // An idle pooled connection must have nothing to read: EOF means the backend closed it,
        // bytes mean garbage we never asked for. Only "would block" means it is still good.
        let mut byte = [MaybeUninit::<u8>::uninit()];
        let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
        match socket2::SockRef::from(&*self.stream).recv_with_flags(&mut byte, flags) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }
}
