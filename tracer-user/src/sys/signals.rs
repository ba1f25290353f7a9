//! SIGINT and SIGTERM, blocked so that `attach` and `watch` handle them in their own loop and
//! end cleanly (detach, or end the watch lease) instead of dying in the middle, and read from a
//! signalfd, by the tokio runtime that `attach` and `watch` each run on.

use std::{
    io,
    mem::{self, MaybeUninit},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    ptr,
};

use tokio::io::unix::AsyncFd;

/// SIGINT and SIGTERM, blocked in this thread (and the threads it starts afterwards), as a
/// readable, non-blocking fd.
pub struct SignalFd(OwnedFd);

impl SignalFd {
    pub fn block() -> io::Result<SignalFd> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset, pthread_sigmask and signalfd get
        // valid pointers to it.
        let fd = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            let errno = libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), ptr::null_mut());
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            libc::signalfd(-1, set.as_ptr(), libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The name of the signal that arrived; `WouldBlock` when none has.
    fn read(&self) -> io::Result<&'static str> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is valid for `size` bytes.
        let read = unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if read != size as isize {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled the whole struct.
        let info = unsafe { info.assume_init() };
        Ok(name(info.ssi_signo))
    }

    /// The signals for a tokio runtime, which must be running.
    pub fn into_async(self) -> io::Result<AsyncSignals> {
        // SAFETY: the fd is an OwnedFd that `self` holds, open and the same until the AsyncFd,
        // which owns `self`, is dropped.
        Ok(AsyncSignals(unsafe { AsyncFd::register(self) }?))
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// [`SignalFd`] on a tokio runtime.
pub struct AsyncSignals(AsyncFd<SignalFd>);

impl AsyncSignals {
    /// Waits for one of the signals and returns its name.
    pub async fn recv(&self) -> io::Result<&'static str> {
        loop {
            let mut ready = self.0.readable().await?;
            if let Ok(read) = ready.try_io(|fd| fd.get_ref().read()) {
                return read;
            }
        }
    }
}

/// The name of one of the two signals.
fn name(signal: u32) -> &'static str {
    if signal == libc::SIGINT as u32 {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}
