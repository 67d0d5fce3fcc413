//! WebSocket echo round trips per second, for `scripts/bench.sh websocket`: TUNNELS
//! connections, each on a thread of its own, open `GET /ws` (lb-backend's echo, directly or
//! through a proxy) and for SECONDS send a masked binary frame of SIZE bytes and wait for its
//! echo, again and again. Prints one line: `round_trips_per_s p50_us p99_us`.
//!
//! ```text
//! cargo run --release --example ws_bench -- 127.0.0.1:8080 [TUNNELS=4] [SECONDS=5] [SIZE=64]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: ws_bench ADDR [TUNNELS] [SECONDS] [SIZE]";
    let addr: SocketAddr = args.first().and_then(|a| a.parse().ok()).unwrap_or_else(|| fail(usage));
    let number =
        |i: usize, default: u64| args.get(i).map_or(Some(default), |a| a.parse().ok()).unwrap_or_else(|| fail(usage));
    let (tunnels, seconds, size) = (number(1, 4) as usize, number(2, 5), number(3, 64) as usize);
    let until = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..tunnels).map(|i| std::thread::spawn(move || run(addr, i as u32, size, until))).collect();
    let mut latencies: Vec<u32> = Vec::new();
    for thread in threads {
        latencies.extend(thread.join().unwrap_or_else(|_| fail("a tunnel failed")));
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let (p50, p99) = (at(0.5).copied().unwrap_or(0), at(0.99).copied().unwrap_or(0));
    println!("{:.0} {p50} {p99}", latencies.len() as f64 / seconds as f64);
}

fn fail(why: &str) -> ! {
    eprintln!("ws_bench: {why}");
    std::process::exit(2)
}

/// One tunnel's round trips until `until`; returns each one's time in microseconds.
fn run(addr: SocketAddr, seed: u32, size: usize, until: Instant) -> Vec<u32> {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| fail(&format!("connect {addr}: {e}")));
    stream.set_nodelay(true).unwrap_or_else(|e| fail(&e.to_string()));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap_or_else(|e| fail(&e.to_string()));
    let handshake = "GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    (&stream).write_all(handshake.as_bytes()).unwrap_or_else(|e| fail(&e.to_string()));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap_or_else(|e| fail(&e.to_string()));
    if !line.starts_with("HTTP/1.1 101") {
        fail(&format!("no 101 from {addr}: {line:?}"));
    }
    while line != "\r\n" {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            fail("closed during the handshake");
        }
    }
    // One frame, masked as a client must, sent as is each time: the echo is what is measured.
    let mask = (seed.wrapping_mul(0x9E37_79B9) | 1).to_be_bytes();
    let mut frame = vec![0x82];
    match size {
        0..=125 => frame.push(0x80 | size as u8),
        126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(size as u16).to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend((0..size).map(|i| (i as u8) ^ mask[i % 4]));
    let echo_len = frame.len() - 4;
    let mut echo = vec![0u8; echo_len];
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        (&stream).write_all(&frame).unwrap_or_else(|e| fail(&format!("send: {e}")));
        reader.read_exact(&mut echo).unwrap_or_else(|e| fail(&format!("echo: {e}")));
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    latencies
}
