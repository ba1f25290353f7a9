//! bpf(2) calls that aya 0.14 does not wrap: detaching a link by id (`flagtrace detach`), and
//! reading a whole map in batches ([`super::maps`]). aya reads a map one entry at a time, two
//! system calls per entry for a hash map (next key, then lookup); BPF_MAP_LOOKUP_BATCH (Linux
//! 5.6 for hash maps, 5.7 for arrays) copies thousands of entries per call.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, RawFd},
};

use aya::{maps::IterableMap, Pod};

/// bpf(2) commands from include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
pub const BPF_LINK_GET_FD_BY_ID: libc::c_int = 30;
pub const BPF_LINK_DETACH: libc::c_int = 34;

/// The kernel's ENOTSUPP (include/linux/errno.h), which libc does not define since it is not
/// meant for user space; bpf(2) returns it for a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// One bpf(2) call; returns what the call returns (a file descriptor for some commands).
///
/// # Safety
/// `attr` is the attribute `command` takes, and every pointer in it is valid for what the
/// command reads and writes through it.
unsafe fn bpf<A>(command: libc::c_int, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: attr is valid for reads and writes of its size; the caller vouches for the rest.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut A,
            size_of::<A>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

/// A bpf(2) call whose attribute is a single leading u32 (`link_id` for BPF_LINK_GET_FD_BY_ID,
/// `link_fd` for BPF_LINK_DETACH); the kernel zero-extends a short attribute.
pub fn bpf_u32(command: libc::c_int, first_field: u32) -> io::Result<RawFd> {
    let mut attr: [u32; 3] = [first_field, 0, 0];
    // SAFETY: the attribute holds no pointers.
    Ok(unsafe { bpf(command, &mut attr) }? as RawFd)
}

/// The interface the bpf link `link_id` (of an XDP or TCX program) is attached to: 0 once it
/// was detached (BPF_LINK_DETACH, or its interface went away), while its holder still has it.
pub fn link_ifindex(link_id: u32) -> io::Result<u32> {
    let fd = bpf_u32(BPF_LINK_GET_FD_BY_ID, link_id)?;
    // SAFETY: BPF_LINK_GET_FD_BY_ID returned a new file descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // struct bpf_link_info: type, id, prog_id, then a union 8-aligned at 16 whose `xdp` and
    // `tcx` members both start with the ifindex.
    let mut info = [0u32; 16];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<[u32; 16]>() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `info` is valid for `info_len` bytes of writes.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(info[4])
}

/// `bpf_attr.batch` of include/uapi/linux/bpf.h, the attribute of the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () = assert!(size_of::<BatchAttr>() == 56);
const _: () = assert!(std::mem::offset_of!(BatchAttr, count) == 32);

/// Where a batched read of a map stands, as the kernel hands it back after each batch: a bucket
/// index for a hash map, the last key read for an array. Sized for both.
#[repr(C)]
#[derive(Clone, Copy)]
union Position<K: Copy> {
    bucket: u32,
    key: K,
}

/// What one batch lookup gave: how many entries it wrote, and whether the map has more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Batch {
    More(usize),
    /// The map ended with these (possibly none): the kernel says so with ENOENT.
    Last(usize),
}

/// One BPF_MAP_LOOKUP_BATCH: up to `keys.len()` entries after `position` (`None`: from the
/// start) into `keys` and `values`; `position` moves past them.
///
/// # Safety
/// The map's keys and values are `K` and `V` in size, and `keys` and `values` are equally long.
unsafe fn lookup_batch<K: Pod, V: Pod>(
    map: RawFd,
    position: &mut Option<Position<K>>,
    keys: &mut [MaybeUninit<K>],
    values: &mut [MaybeUninit<V>],
) -> io::Result<Batch> {
    let mut next = MaybeUninit::<Position<K>>::uninit();
    let mut attr = BatchAttr {
        in_batch: position
            .as_ref()
            .map_or(0, |p| p as *const Position<K> as u64),
        out_batch: next.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().try_into().unwrap_or(u32::MAX),
        map_fd: map as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the kernel writes at most `count` keys and values of the map's sizes, which the
    // caller vouches for, and a position of at most a key's or a bucket index's size.
    let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
    // The kernel writes back how many entries it copied, also when it fails with ENOENT.
    let count = (attr.count as usize).min(keys.len());
    match result {
        Ok(_) => {
            // SAFETY: a successful batch wrote the position to continue from.
            *position = Some(unsafe { next.assume_init() });
            Ok(Batch::More(count))
        }
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(Batch::Last(count)),
        Err(error) => Err(error),
    }
}

/// Reads every entry of `map` in batches of up to `chunk` entries, handing each to `entry`, and
/// stops once `limit` entries were read: a bound for a table that changes while it is read.
/// `Ok(false)` when the kernel cannot read this map in batches (EINVAL before Linux 5.6,
/// ENOTSUPP for a map type without batch lookups): then nothing was read, and the caller reads
/// the map some other way.
pub fn lookup_all<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    chunk: usize,
    limit: usize,
    entry: impl FnMut(&K, &V),
) -> io::Result<bool> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    read_batches(
        // SAFETY: aya checked the map's key and value sizes against K and V when it typed the
        // map, and read_batches passes buffers of one length.
        |position, keys, values| unsafe { lookup_batch(fd, position, keys, values) },
        chunk,
        limit,
        entry,
    )
}

/// [`lookup_all`] over any batch lookup, so that its handling of the kernel's answers can be
/// tested without one.
fn read_batches<K: Pod, V: Pod>(
    mut lookup: impl FnMut(
        &mut Option<Position<K>>,
        &mut [MaybeUninit<K>],
        &mut [MaybeUninit<V>],
    ) -> io::Result<Batch>,
    chunk: usize,
    limit: usize,
    mut entry: impl FnMut(&K, &V),
) -> io::Result<bool> {
    let mut room = chunk.clamp(1, limit.max(1));
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut position = None;
    let mut read = 0;
    loop {
        keys.resize(room, MaybeUninit::uninit());
        values.resize(room, MaybeUninit::uninit());
        let batch = match lookup(&mut position, &mut keys, &mut values) {
            Ok(batch) => batch,
            Err(error) if read == 0 && position.is_none() && cannot_batch(&error) => {
                return Ok(false)
            }
            // A hash bucket holds more entries than there is room for, and a batch never splits
            // a bucket: make room for it.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) && room < limit => {
                room = (room * 2).min(limit);
                continue;
            }
            Err(error) => return Err(error),
        };
        let (count, last) = match batch {
            Batch::More(count) => (count, false),
            Batch::Last(count) => (count, true),
        };
        for (key, value) in keys.iter().zip(&values).take(count) {
            // SAFETY: the lookup wrote the first `count` keys and values, and any bytes are a
            // valid Pod.
            entry(unsafe { key.assume_init_ref() }, unsafe {
                value.assume_init_ref()
            });
        }
        read += count;
        // A batch of nothing that is not the last would make no progress: stop there too.
        if last || count == 0 || read >= limit {
            return Ok(true);
        }
    }
}

/// Whether a batch lookup failed because this kernel or this map type has none.
fn cannot_batch(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | ENOTSUPP))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `len` entries `(i, 10 * i)` read through a fake kernel that answers as
    /// BPF_MAP_LOOKUP_BATCH does for an array: `errors` first (one per call), then batches.
    fn read_fake(
        len: u32,
        chunk: usize,
        limit: usize,
        mut errors: Vec<i32>,
    ) -> (io::Result<bool>, Vec<(u32, u64)>, usize) {
        let mut calls = 0;
        let mut entries = Vec::new();
        let result = read_batches(
            |position: &mut Option<Position<u32>>, keys, values: &mut [MaybeUninit<u64>]| {
                calls += 1;
                if !errors.is_empty() {
                    return Err(io::Error::from_raw_os_error(errors.remove(0)));
                }
                // SAFETY: this fake keeps the last key read in the position.
                let start = position.map_or(0, |p| unsafe { p.key } + 1);
                let count = (len.saturating_sub(start) as usize).min(keys.len());
                for i in 0..count {
                    let key = start + i as u32;
                    keys[i].write(key);
                    values[i].write(u64::from(key) * 10);
                }
                if start as usize + count == len as usize {
                    return Ok(Batch::Last(count));
                }
                *position = Some(Position {
                    key: start + count as u32 - 1,
                });
                Ok(Batch::More(count))
            },
            chunk,
            limit,
            |key, value| entries.push((*key, *value)),
        );
        (result, entries, calls)
    }

    fn expected(len: u32) -> Vec<(u32, u64)> {
        (0..len).map(|i| (i, u64::from(i) * 10)).collect()
    }

    #[test]
    fn reads_chunk_by_chunk_to_the_end() {
        let (result, entries, calls) = read_fake(10, 4, 100, vec![]);
        assert!(result.unwrap());
        assert_eq!(entries, expected(10));
        // 4 + 4, then the last 2 with ENOENT.
        assert_eq!(calls, 3);
    }

    #[test]
    fn an_empty_map_is_one_call() {
        let (result, entries, calls) = read_fake(0, 4, 100, vec![]);
        assert!(result.unwrap());
        assert!(entries.is_empty());
        assert_eq!(calls, 1);
    }

    #[test]
    fn stops_at_the_limit() {
        let (result, entries, _) = read_fake(100, 4, 10, vec![]);
        assert!(result.unwrap());
        assert_eq!(entries, expected(12));
    }

    #[test]
    fn a_kernel_without_batches_is_told_apart() {
        for errno in [libc::EINVAL, ENOTSUPP] {
            let (result, entries, calls) = read_fake(10, 4, 100, vec![errno]);
            assert!(!result.unwrap(), "{errno}");
            assert!(entries.is_empty());
            assert_eq!(calls, 1);
        }
        let (result, _, _) = read_fake(10, 4, 100, vec![libc::EPERM]);
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn a_bucket_larger_than_the_room_gets_more_room() {
        let (result, entries, calls) = read_fake(10, 2, 100, vec![libc::ENOSPC, libc::ENOSPC]);
        assert!(result.unwrap());
        assert_eq!(entries, expected(10));
        // Two refusals, then room for 8: 8, then the last 2.
        assert_eq!(calls, 4);
        let (result, _, _) = read_fake(10, 2, 2, vec![libc::ENOSPC]);
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    }
}
