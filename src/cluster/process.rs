//! Finding PostgreSQL's programs and running them as an OS user PostgreSQL accepts.
//!
//! PostgreSQL refuses to run as root, so when pgshard runs as root (containers, CI)
//! every PostgreSQL program runs as the `postgres` OS user, and the directories it must
//! write to are handed over to that user first.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::error::PG_BIN_ENV;
use super::ClusterError;

/// The OS user PostgreSQL runs as when the current process is root.
const POSTGRES_OS_USER: &str = "postgres";
/// Where Debian and Ubuntu install each PostgreSQL major version (`<root>/<ver>/bin`).
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// Buffer for getpwnam_r; glibc suggests sysconf(_SC_GETPW_R_SIZE_MAX), about 1 KiB.
const PASSWD_BUF_BYTES: usize = 16 * 1024;
/// A directory with this mode bit set and world-writable (like /tmp) is shared; it is
/// never chown'ed, and any user may create entries in it anyway.
const STICKY_BIT: u32 = 0o1000;
/// Label used in errors that are not about one node.
pub(crate) const SETUP: &str = "cluster setup";

/// An OS user to switch to before exec.
#[derive(Debug, Clone)]
pub(crate) struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Finds the directory holding `initdb`, `pg_ctl`, `pg_basebackup`, `postgres`, `psql`.
///
/// Order: `$PGSHARD_PG_BIN`, the highest version under `/usr/lib/postgresql/*/bin`,
/// `pg_config --bindir`, then `initdb` on `PATH`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        // An explicit setting that is wrong must not be silently replaced by a guess.
        if has_initdb(&dir) {
            return Ok(dir);
        }
        let searched = format!("{PG_BIN_ENV}={} has no initdb", dir.display());
        return Err(ClusterError::BinariesMissing { searched });
    }
    highest_versioned_bin_dir(Path::new(DEBIAN_PG_ROOT))
        .or_else(pg_config_bin_dir)
        .or_else(|| search_path(std::env::var_os("PATH")?.as_os_str()))
        .ok_or_else(|| ClusterError::BinariesMissing {
            searched: format!(
                "{PG_BIN_ENV} unset, nothing in {DEBIAN_PG_ROOT}/*/bin, \
                 no pg_config, no initdb on PATH"
            ),
        })
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

/// `<root>/<version>/bin` with the highest version that has initdb ("15" > "9.6").
fn highest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn pg_config_bin_dir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    has_initdb(&dir).then_some(dir)
}

fn search_path(path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path).find(|dir| has_initdb(dir))
}

/// Looks up an OS user by name (getpwnam_r, because tests start clusters from
/// several threads and getpwnam's static buffer is not thread safe).
pub(crate) fn lookup_user(name: &str) -> Option<OsUser> {
    let c_name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; PASSWD_BUF_BYTES];
    // SAFETY: passwd is plain old data; all-zero is a valid (empty) value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and buf outlives the reads below.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: on success pw_dir points at a NUL-terminated string inside buf.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) };
    Some(OsUser {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(home.to_string_lossy().into_owned()),
    })
}

/// Runs PostgreSQL programs from one bin dir, as the right OS user.
#[derive(Debug)]
pub(crate) struct Runner {
    bin_dir: PathBuf,
    run_as: Option<OsUser>,
    /// Working directory for every program: one the run-as user can enter (root's
    /// home usually is not, and initdb warns when it cannot return to its cwd).
    work_dir: PathBuf,
}

impl Runner {
    pub fn new(bin_dir: PathBuf, work_dir: PathBuf) -> Result<Runner, ClusterError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(POSTGRES_OS_USER).ok_or(ClusterError::NoPostgresUser)?)
        } else {
            None
        };
        Ok(Runner {
            bin_dir,
            run_as,
            work_dir,
        })
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A command for `program` from the bin dir that will run as the run-as user.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir(&self.work_dir).stdin(Stdio::null());
        if let Some(user) = &self.run_as {
            cmd.env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
            let (uid, gid) = (user.uid, user.gid);
            // SAFETY: the closure runs between fork and exec and only makes
            // async-signal-safe system calls; it allocates nothing.
            unsafe {
                cmd.pre_exec(move || drop_privileges(uid, gid));
            }
        }
        cmd
    }

    /// Runs `cmd` to completion; a non-zero exit becomes `CommandFailed` with its output.
    pub fn run(&self, node: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
        let command = describe(cmd);
        tracing::debug!(node, command = %command, "running");
        let output = cmd.output().map_err(|source| ClusterError::Spawn {
            node: node.to_string(),
            command: command.clone(),
            source,
        })?;
        if output.status.success() {
            return Ok(output);
        }
        Err(ClusterError::CommandFailed {
            node: node.to_string(),
            command,
            status: output.status.to_string(),
            output: self.explain(&output),
        })
    }

    fn explain(&self, output: &Output) -> String {
        let stream = if output.stderr.is_empty() {
            &output.stdout
        } else {
            &output.stderr
        };
        let mut text = String::from_utf8_lossy(stream).trim().to_string();
        if let (Some(user), true) = (&self.run_as, text.contains("Permission denied")) {
            text.push_str(&format!(
                " (hint: PostgreSQL runs as OS user `{}`; every parent directory must be \
                 searchable by it)",
                user.name
            ));
        }
        text
    }

    /// Creates `dir` (and missing parents) and, when running as root, gives the
    /// directories created, and `dir` itself, to the run-as user so it can create
    /// data directories there.
    pub fn prepare_dir(&self, dir: &Path) -> Result<(), ClusterError> {
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .collect();
        std::fs::create_dir_all(dir)
            .map_err(|e| ClusterError::io(SETUP, "could not create", dir, e))?;
        if self.run_as.is_none() {
            return Ok(());
        }
        for created in missing.iter().rev() {
            self.hand_over(created)?;
        }
        if missing.is_empty() && !is_shared_dir(dir)? {
            self.hand_over(dir)?;
        }
        Ok(())
    }

    /// Gives `path` to the run-as user (no-op when not root).
    pub fn hand_over(&self, path: &Path) -> Result<(), ClusterError> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| ClusterError::io(SETUP, "could not chown", path, e))
    }
}

/// True for a world-writable sticky directory such as /tmp, which must keep its owner.
fn is_shared_dir(dir: &Path) -> Result<bool, ClusterError> {
    let meta =
        std::fs::metadata(dir).map_err(|e| ClusterError::io(SETUP, "could not stat", dir, e))?;
    let mode = meta.permissions().mode();
    Ok(mode & STICKY_BIT != 0 && mode & 0o002 != 0)
}

/// Runs in the child between fork and exec. Order matters: supplementary groups and
/// the gid can only be changed while still root, so the uid goes last.
fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    let groups = [gid];
    // SAFETY: plain system calls; `groups` is valid for the duration of setgroups.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The command line for error messages. Not `{:?}` of the Command: that would also
/// print environment variables set on it, and PGPASSWORD is one of them.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_version_with_initdb_wins() {
        let root = tempfile::tempdir().expect("tempdir");
        for (version, with_initdb) in [("9.6", true), ("15", true), ("16", false), ("x", true)] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            if with_initdb {
                std::fs::write(bin.join("initdb"), b"").expect("write");
            }
        }
        let found = highest_versioned_bin_dir(root.path());
        assert_eq!(found, Some(root.path().join("15").join("bin")));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("10") > parse_version("9.6"));
        assert_eq!(parse_version("beta"), None);
    }

    #[test]
    fn describe_leaves_out_environment() {
        let mut cmd = Command::new("pg_basebackup");
        cmd.arg("-D").arg("x").env("PGPASSWORD", "secret");
        assert_eq!(describe(&cmd), "pg_basebackup -D x");
    }

    #[test]
    fn path_search_finds_initdb() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("initdb"), b"").expect("write");
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().expect("utf8")])
            .expect("join");
        assert_eq!(search_path(&path), Some(dir.path().to_path_buf()));
    }
}
