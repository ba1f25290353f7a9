//! SIGINT and SIGTERM, blocked so that `attach` and `watch` handle them in their own loop and
//! end cleanly (detach, or end the watch lease) instead of dying in the middle.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{FromRawFd as _, OwnedFd},
    ptr,
};

/// SIGINT and SIGTERM, blocked in this thread (and the threads it starts afterwards).
pub struct TerminationSignals(libc::sigset_t);

impl TerminationSignals {
    pub fn block() -> io::Result<TerminationSignals> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset and pthread_sigmask get valid
        // pointers to it.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            let errno = libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), ptr::null_mut());
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            set.assume_init()
        };
        Ok(TerminationSignals(set))
    }

    /// Waits for one of the signals and returns its name.
    pub fn wait(&self) -> io::Result<&'static str> {
        let mut signal = 0;
        // SAFETY: both pointers are valid; the set was initialised in `block`.
        let errno = unsafe { libc::sigwait(&self.0, &mut signal) };
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(name(signal as u32))
    }

    /// Waits at most `timeout` for one of the signals; its name, or `None` when none came.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> io::Result<Option<&'static str>> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the set was initialised in `block`; the info pointer may be null.
        let signal = unsafe { libc::sigtimedwait(&self.0, ptr::null_mut(), &timeout) };
        if signal >= 0 {
            return Ok(Some(name(signal as u32)));
        }
        match io::Error::last_os_error() {
            error if error.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
            error if error.kind() == io::ErrorKind::Interrupted => Ok(None),
            error => Err(error),
        }
    }

    /// A non-blocking signalfd for the signals, for a poll(2) loop.
    pub fn signalfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: the set was initialised in `block`.
        let fd = unsafe { libc::signalfd(-1, &self.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The name of one of the two signals.
pub fn name(signal: u32) -> &'static str {
    if signal == libc::SIGINT as u32 {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}
