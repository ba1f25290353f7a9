//! SIGINT and SIGTERM for the watch loop: blocked, and read from a signalfd, so that poll(2)
//! waits for them along with the events.

use std::{
    io, mem,
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
};

use crate::sys::signals::{self, TerminationSignals};

/// SIGINT and SIGTERM, blocked, as a readable fd.
pub struct Signals(OwnedFd);

impl Signals {
    pub fn block() -> io::Result<Signals> {
        Ok(Signals(TerminationSignals::block()?.signalfd()?))
    }

    /// The name of the signal that arrived.
    pub fn read(&self) -> io::Result<&'static str> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is valid for `size` bytes.
        let read = unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if read != size as isize {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled the whole struct.
        let info = unsafe { info.assume_init() };
        Ok(signals::name(info.ssi_signo))
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
