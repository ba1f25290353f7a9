//! An array of the kernel's fixed size whose memory follows what is used of it: chunks are
//! allocated at their first access, so a capture pays for the reset and activity entries its
//! packets touch, not for a default attachment's 31 MB per interface (a hostile pcapng with a
//! thousand one-packet interfaces would otherwise ask for 31 GB).

use std::cell::{OnceCell, UnsafeCell};

/// Entries per chunk: small enough that a chunk of reset entries (352 bytes each) is 88 KiB,
/// large enough that the chunk table of a 262,144-slot activity table is 32 KiB.
const CHUNK: usize = 256;

/// One chunk: allocated whole at its first access.
type Chunk<T> = OnceCell<Box<[UnsafeCell<T>]>>;

/// `len` entries of `T`, each `T::default()` until written. Entries hand out raw pointers, as
/// BPF map lookups do: a chunk never moves once allocated. Single-threaded, like one CPU.
pub struct SparseArray<T> {
    len: usize,
    chunks: Box<[Chunk<T>]>,
}

impl<T: Default> SparseArray<T> {
    pub fn new(len: usize) -> Self {
        SparseArray {
            len,
            chunks: (0..len.div_ceil(CHUNK)).map(|_| OnceCell::new()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The entry at `index`, its chunk allocated if this is the first access; `None` beyond the
    /// end, as a map lookup out of range.
    pub fn get(&self, index: usize) -> Option<*mut T> {
        if index >= self.len {
            return None;
        }
        let chunk = self.chunks[index / CHUNK].get_or_init(|| {
            let len = CHUNK.min(self.len - index / CHUNK * CHUNK);
            (0..len).map(|_| UnsafeCell::new(T::default())).collect()
        });
        Some(chunk[index % CHUNK].get())
    }

    /// The entries of the chunks accessed so far; the others are all `T::default()`.
    ///
    /// # Safety
    /// No pointer from [`SparseArray::get`] may be written through while the iterator lives.
    pub unsafe fn accessed(&self) -> impl Iterator<Item = &T> {
        self.chunks
            .iter()
            .filter_map(OnceCell::get)
            .flat_map(|chunk| chunk.iter())
            // SAFETY: no writes while borrowed (the caller's contract).
            .map(|entry| unsafe { &*entry.get() })
    }

    /// How many chunks hold memory.
    #[cfg(test)]
    fn allocated_chunks(&self) -> usize {
        self.chunks
            .iter()
            .filter(|chunk| chunk.get().is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_allocated_where_touched_and_never_move() {
        let array: SparseArray<u64> = SparseArray::new(3 * CHUNK + 10);
        assert_eq!(array.allocated_chunks(), 0);
        let first = array.get(5).unwrap();
        // SAFETY: a valid entry, no other reference to it.
        unsafe { *first = 7 };
        let last = array.get(3 * CHUNK + 9).unwrap();
        // SAFETY: as above.
        unsafe { *last = 9 };
        assert_eq!(array.get(3 * CHUNK + 10), None);
        assert_eq!(array.allocated_chunks(), 2);
        assert_eq!(array.get(5), Some(first));
        // SAFETY: no writes while iterating.
        let values: Vec<u64> = unsafe { array.accessed() }.copied().collect();
        assert_eq!(values.len(), CHUNK + 10);
        assert_eq!(values.iter().filter(|v| **v != 0).count(), 2);
        assert_eq!(values.iter().sum::<u64>(), 16);
    }
}
