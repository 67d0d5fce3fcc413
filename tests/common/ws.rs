//! WebSocket frames as a client sends them (RFC 6455 5.2): masked, with the 7-bit, 16-bit or
//! 64-bit length form the payload needs.

/// One client frame: `fin`, `opcode`, `payload` masked with `mask`.
pub fn client_frame(fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One frame as a server sends it (unmasked): `(fin, opcode, payload)`.
pub fn read_server_frame(reader: &mut impl std::io::Read) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head)?;
    assert_eq!(head[1] & 0x80, 0, "a server must not mask its frames");
    let length = match head[1] & 0x7F {
        126 => {
            let mut n = [0u8; 2];
            reader.read_exact(&mut n)?;
            u64::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            reader.read_exact(&mut n)?;
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; length as usize];
    reader.read_exact(&mut payload)?;
    Ok((head[0] & 0x80 != 0, head[0] & 0x0F, payload))
}
