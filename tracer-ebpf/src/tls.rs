//! The server name (RFC 6066 server_name) of a TLS ClientHello, read from a client's first
//! payload: the name the client asked for, which a reset after the ClientHello is about.
//!
//! Written for the verifier: every read goes through [`Tables::copy_packet`] (a TC packet may
//! be non-linear), at offsets the code computes as plain numbers, and the walk over the
//! extensions is bounded. Only the first segment is read: a ClientHello that spans segments
//! (a large post-quantum key share puts the name there when the client orders it late) keeps
//! no name.

use tracer_common::{TlsName, TLS_NAME_MAX};

use crate::account::Tables;

/// TLS record type of a handshake message.
const HANDSHAKE_RECORD: u8 = 0x16;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 0x01;
/// Extension type of server_name.
const SERVER_NAME: u16 = 0;
/// server_name's name type of a DNS host name.
const HOST_NAME: u8 = 0;
/// Extensions walked before server_name is given up: clients send 10 to 20.
const MAX_EXTENSIONS: usize = 32;
/// From the start of the record to the ClientHello's session_id length: record header (5),
/// handshake header (4), client_version (2), random (32).
const SESSION_ID_OFFSET: u32 = 5 + 4 + 2 + 32;

/// The `N` bytes at `offset`; `None` past the end of the packet.
#[inline(always)]
fn read<T: Tables, const N: usize>(tables: &T, offset: u32) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    // SAFETY: `bytes` has room for its N bytes.
    unsafe { tables.copy_packet(offset, bytes.as_mut_ptr(), N as u32) }.then_some(bytes)
}

#[inline(always)]
fn read_u16<T: Tables>(tables: &T, offset: u32) -> Option<u32> {
    read::<T, 2>(tables, offset).map(|bytes| u16::from_be_bytes(bytes) as u32)
}

/// Reads the server name of the ClientHello that starts the payload at `payload` (an offset in
/// the packet) of `payload_len` bytes into `out`; false when the payload is not a ClientHello
/// with a host name in this segment.
#[inline(always)]
pub fn server_name<T: Tables>(
    tables: &T,
    payload: u32,
    payload_len: u32,
    out: &mut TlsName,
) -> bool {
    read_server_name(tables, payload, payload_len, out).is_some()
}

#[inline(always)]
fn read_server_name<T: Tables>(
    tables: &T,
    payload: u32,
    payload_len: u32,
    out: &mut TlsName,
) -> Option<()> {
    let [record, major, _, _, _, message] = read::<T, 6>(tables, payload)?;
    if record != HANDSHAKE_RECORD || major != 3 || message != CLIENT_HELLO {
        return None;
    }
    let end = payload.checked_add(payload_len)?;
    let [session_id_len] = read::<T, 1>(tables, payload + SESSION_ID_OFFSET)?;
    let cipher_suites = payload + SESSION_ID_OFFSET + 1 + session_id_len as u32;
    let compression = cipher_suites + 2 + read_u16(tables, cipher_suites)?;
    let [compression_len] = read::<T, 1>(tables, compression)?;
    let extensions = compression + 1 + compression_len as u32;
    let extensions_end = (extensions + 2 + read_u16(tables, extensions)?).min(end);
    let mut at = extensions + 2;
    for _ in 0..MAX_EXTENSIONS {
        if at + 4 > extensions_end {
            return None;
        }
        let [type_hi, type_lo, len_hi, len_lo] = read::<T, 4>(tables, at)?;
        let len = u16::from_be_bytes([len_hi, len_lo]) as u32;
        if u16::from_be_bytes([type_hi, type_lo]) == SERVER_NAME {
            // The list's length (2), then its first entry: name type (1), length (2), name.
            let [_, _, name_type, name_hi, name_lo] = read::<T, 5>(tables, at + 4)?;
            let name_len = u16::from_be_bytes([name_hi, name_lo]);
            if name_type != HOST_NAME || name_len == 0 {
                return None;
            }
            return copy_name(tables, at + 9, name_len, out);
        }
        at += 4 + len;
    }
    None
}

/// Copies the first bytes of a name of `len` bytes at `offset` into `out`.
#[inline(always)]
fn copy_name<T: Tables>(tables: &T, offset: u32, len: u16, out: &mut TlsName) -> Option<()> {
    // Checked after an optimisation barrier, as the verifier needs to see the bounds.
    let kept = core::hint::black_box((len as u32).min(TLS_NAME_MAX as u32));
    if kept == 0 || kept > TLS_NAME_MAX as u32 {
        return None;
    }
    // SAFETY: `kept` is at most the name array's length.
    if !unsafe { tables.copy_packet(offset, out.name.as_mut_ptr(), kept) } {
        return None;
    }
    out.len = len;
    Some(())
}
