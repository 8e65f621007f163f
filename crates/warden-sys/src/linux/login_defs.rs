//! Which uids are system accounts, read from `/etc/login.defs` the way
//! shadow-utils reads it.
//!
//! A client trusts the owner of a root-controlled socket directory only if
//! that owner is a system account (see [`crate::ServerTrust::Default`]):
//! root hands `/run/warden` to the `warden` service account, but it also
//! hands `/home/USER` and `/run/user/UID` to every ordinary user, and any
//! of them may listen there. System accounts are the ones `useradd
//! --system` and systemd-sysusers allocate: uid ≤ `SYS_UID_MAX`.
//!
//! # Assumptions
//! `/etc/login.defs` is root's; its contents are trusted but may be
//! sloppy, so a value shadow-utils would reject is treated as absent, and
//! a value it would wrap around (a negative number, or one past `u32`) is
//! treated as absent too rather than widening the range. A missing or
//! unreadable file means the defaults.
//!
//! # How a value is found (shadow-utils 4.13 `lib/getdef.c`, `def_load`)
//! - Lines end at `\n`; trailing white space (C `isspace`) is cut.
//! - Leading spaces and tabs are skipped; an empty line or one starting
//!   with `#` is a comment.
//! - The name runs to the first space or tab and is matched exactly (case
//!   matters); a line with no value after the name is skipped.
//! - The value starts after any spaces, tabs and `"` that follow the name
//!   and ends at the next `"` (or the end of the line): `SYS_UID_MAX
//!   "999"` is 999, but `SYS_UID_MAX 999 # system` is not a number.
//! - **The last line naming a key wins**, even when its value is not a
//!   number (`putdef_str` replaces the stored value; `getdef_ulong` then
//!   falls back to the default).
//!
//! # How a number is read (`lib/getulong.c`: `strtoul(s, &end, 0)`)
//! Leading white space, an optional `+`, then `0x`/`0X` and hex digits,
//! `0` and octal digits, or decimal digits, and nothing after. So `0x3e7`
//! and `01747` are both 999, and `08` is not a number. Stricter than
//! `strtoul`: a `-` sign (which `strtoul` wraps to a huge value) and a
//! value above `u32::MAX` are not numbers.
//!
//! # The range
//! `SYS_UID_MAX`; else `UID_MIN − 1` (0 if `UID_MIN` is 0); else 999,
//! as in shadow-utils' `find_new_uid.c`. 65534 (`nobody`, the overflow
//! uid) and 4294967295 (`(uid_t) -1`) are never system accounts, however
//! large `SYS_UID_MAX` is.

use std::path::Path;

/// Where shadow-utils keeps the account ranges.
pub const LOGIN_DEFS: &str = "/etc/login.defs";

/// The last system uid when `login.defs` sets neither `SYS_UID_MAX` nor
/// `UID_MIN` (shadow-utils' default `UID_MIN` is 1000).
pub const DEFAULT_SYS_UID_MAX: u32 = 999;

/// `nobody`: the kernel's overflow uid, shared by unrelated services and
/// by unmapped users. Never a system account here.
pub const NOBODY_UID: u32 = 65534;

/// `(uid_t) -1`, which no process or file can be owned by.
const NO_UID: u32 = u32::MAX;

/// The system-account uid range: 0 ..= [`SystemAccounts::max`], without
/// [`NOBODY_UID`].
///
/// ```
/// use warden_sys::SystemAccounts;
/// let debian = SystemAccounts::from_login_defs("UID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\n");
/// assert_eq!(debian.max(), 999);
/// assert!(debian.contains(996)); // the `warden` service account
/// assert!(!debian.contains(1000)); // the first ordinary user
/// assert!(!debian.contains(65534)); // nobody
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemAccounts {
    max: u32,
}

impl SystemAccounts {
    /// The range `login_defs` (the text of a `login.defs` file) sets.
    pub fn from_login_defs(login_defs: &str) -> SystemAccounts {
        let mut sys_uid_max = None;
        let mut uid_min = None;
        for (name, value) in definitions(login_defs) {
            match name {
                "SYS_UID_MAX" => sys_uid_max = Some(value),
                "UID_MIN" => uid_min = Some(value),
                _ => {}
            }
        }
        let max = match (
            sys_uid_max.and_then(parse_ulong),
            uid_min.and_then(parse_ulong),
        ) {
            (Some(max), _) => max,
            (None, Some(min)) => min.saturating_sub(1),
            (None, None) => DEFAULT_SYS_UID_MAX,
        };
        SystemAccounts { max }
    }

    /// The range [`LOGIN_DEFS`] sets, or the default (up to 999) if it is
    /// missing or unreadable.
    pub fn load() -> SystemAccounts {
        Self::load_from(Path::new(LOGIN_DEFS))
    }

    /// The range the file at `path` sets, or the default (up to 999) if it
    /// is missing or unreadable. Bytes that are not UTF-8 are replaced
    /// (they can only spoil a value, never make one).
    pub fn load_from(path: &Path) -> SystemAccounts {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_login_defs(&String::from_utf8_lossy(&bytes)),
            Err(_) => SystemAccounts {
                max: DEFAULT_SYS_UID_MAX,
            },
        }
    }

    /// The last uid of the range (`SYS_UID_MAX`).
    pub fn max(&self) -> u32 {
        self.max
    }

    /// True if `uid` is a system account: `uid ≤ max`, and not
    /// [`NOBODY_UID`] (nor `(uid_t) -1`).
    pub fn contains(&self, uid: u32) -> bool {
        uid <= self.max && uid != NOBODY_UID && uid != NO_UID
    }
}

/// C's `isspace` in the C locale.
fn c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The `(name, value)` pairs of `text`, in order, split as shadow-utils'
/// `def_load` splits them.
fn definitions(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split('\n').filter_map(|line| {
        let line = line
            .trim_end_matches(c_space)
            .trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (name, rest) = line.split_once([' ', '\t'])?;
        let value = rest.trim_start_matches([' ', '"', '\t']);
        let value = value.split_once('"').map_or(value, |(v, _)| v);
        Some((name, value))
    })
}

/// A number as `strtoul(s, &end, 0)` reads it with nothing left over, or
/// `None`; also `None` for a `-` sign or a value above `u32::MAX`.
fn parse_ulong(s: &str) -> Option<u32> {
    let s = s.trim_start_matches(c_space);
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (hex, 16)
    } else if let Some(oct) = s.strip_prefix('0').filter(|rest| !rest.is_empty()) {
        (oct, 8)
    } else {
        (s, 10)
    };
    // `from_str_radix` alone would also take a sign here.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors the Python client's tests read too.
    const VECTORS: &str = include_str!("../../../../clients/testdata/login_defs_vectors.json");

    #[test]
    fn shared_vectors() -> Result<(), Box<dyn std::error::Error>> {
        let doc: serde_json::Value = serde_json::from_str(VECTORS)?;
        let cases = doc["cases"].as_array().ok_or("no cases")?;
        assert!(cases.len() >= 20, "only {} cases", cases.len());
        for case in cases {
            let name = case["name"].as_str().ok_or("case without a name")?;
            let accounts = match case["login_defs"].as_str() {
                Some(text) => SystemAccounts::from_login_defs(text),
                // No file at all.
                None => SystemAccounts::load_from(Path::new("/nonexistent/warden/login.defs")),
            };
            assert_eq!(
                Some(u64::from(accounts.max())),
                case["sys_uid_max"].as_u64(),
                "{name}"
            );
            for (key, want) in [("trusted", true), ("untrusted", false)] {
                for uid in case[key].as_array().ok_or("no uid list")? {
                    let uid = u32::try_from(uid.as_u64().ok_or("uid not a number")?)?;
                    assert_eq!(accounts.contains(uid), want, "{name}: uid {uid}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn an_unreadable_file_means_the_default() {
        // A directory: open succeeds, read fails (EISDIR).
        assert_eq!(SystemAccounts::load_from(Path::new("/")).max(), 999);
        assert_eq!(
            SystemAccounts::load_from(Path::new("/nonexistent/login.defs")).max(),
            999
        );
    }

    #[test]
    fn numbers_read_like_strtoul_base_0() {
        for (text, want) in [
            ("999", Some(999)),
            ("0x3e7", Some(999)),
            ("0X3E7", Some(999)),
            ("01747", Some(999)),
            ("0", Some(0)),
            ("00", Some(0)),
            ("+999", Some(999)),
            ("\x0b999", Some(999)),
            ("4294967295", Some(u32::MAX)),
            ("4294967296", None),
            ("-1", None),
            ("08", None),
            ("0x", None),
            ("0xg", None),
            ("++1", None),
            ("+-1", None),
            ("1_000", None),
            ("999 ", None),
            ("", None),
            ("٣", None),
        ] {
            assert_eq!(parse_ulong(text), want, "{text:?}");
        }
    }
}
