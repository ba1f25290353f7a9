//! External commands that xtask runs: printed before they run, in a form a person can paste
//! into a shell, and failing with the command named.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    program: String,
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    /// Installs system packages: only root can run it, so printed with `sudo` for anyone else.
    pub needs_root: bool,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Cmd {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            needs_root: false,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: &'static str, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key, value.as_ref().to_owned()));
        self
    }

    pub fn root(mut self) -> Self {
        self.needs_root = true;
        self
    }

    fn command(&self, cwd: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd);
        command
    }

    /// Prints the command, runs it with inherited output, and fails unless it exits 0.
    pub fn run(&self, cwd: &Path) -> Result<()> {
        eprintln!("+ {self}");
        self.run_with_stdin(cwd, Stdio::inherit())
    }

    /// Runs the command without printing it (the caller has said what it does) and with no
    /// standard input, so an installer cannot wait on a prompt in CI.
    pub fn run_unattended(&self, cwd: &Path) -> Result<()> {
        self.run_with_stdin(cwd, Stdio::null())
    }

    fn run_with_stdin(&self, cwd: &Path, stdin: Stdio) -> Result<()> {
        let status = self
            .command(cwd)
            .stdin(stdin)
            .status()
            .with_context(|| format!("cannot start `{self}`"))?;
        if !status.success() {
            bail!("`{self}` failed ({status})");
        }
        Ok(())
    }

    /// Prints the command and replaces this process with it, in the caller's working directory
    /// (its arguments may name paths relative to it), so that its exit code and its signals are
    /// its own. Returns only on failure.
    pub fn exec(&self) -> anyhow::Error {
        use std::os::unix::process::CommandExt as _;
        eprintln!("+ {self}");
        let err = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .exec();
        anyhow::Error::new(err).context(format!("cannot run `{self}`"))
    }

    /// Runs the command silently (a read-only probe) and returns its stdout. `Ok(None)` when the
    /// program is not installed; an error when it ran and failed.
    pub fn probe(&self, cwd: &Path) -> Result<Option<String>> {
        let output = match self.command(cwd).stdin(Stdio::null()).output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot start `{self}`")),
        };
        if !output.status.success() {
            bail!(
                "`{self}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
    }

    /// Same as [`Cmd::probe`], for probes whose non-zero exit still carries the answer on stdout
    /// (dpkg-query exits 1 when one of several packages is unknown but reports the others).
    pub fn probe_any_status(&self, cwd: &Path) -> Result<Option<String>> {
        match self.command(cwd).stdin(Stdio::null()).output() {
            Ok(output) => Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot start `{self}`")),
        }
    }
}

/// Shell syntax: environment assignments, program, arguments, each quoted when needed.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(&v.to_string_lossy())))
            .chain(std::iter::once(shell_quote(&self.program)))
            .chain(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        let mut first = true;
        for word in words {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(&word)?;
        }
        Ok(())
    }
}

/// Quotes `word` for a POSIX shell only when it holds characters the shell would interpret.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_are_not_quoted() {
        assert_eq!(shell_quote("--features"), "--features");
        assert_eq!(shell_quote("/usr/lib/llvm-22"), "/usr/lib/llvm-22");
        assert_eq!(shell_quote("--test-threads=1"), "--test-threads=1");
    }

    #[test]
    fn words_with_shell_characters_are_quoted() {
        assert_eq!(shell_quote("${Status}"), "'${Status}'");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn display_is_pasteable_shell() {
        let cmd = Cmd::new("cargo")
            .args(["install", "bpf-linker"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        assert_eq!(
            cmd.to_string(),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker"
        );
    }

    #[test]
    fn probe_reports_a_missing_program_as_none() {
        let cmd = Cmd::new("flagtrace-xtask-no-such-program");
        assert_eq!(cmd.probe(Path::new("/")).unwrap(), None);
    }

    #[test]
    fn probe_fails_on_non_zero_exit() {
        let err = Cmd::new("false").probe(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("`false` failed"), "{err}");
    }
}
