//! Taking a secret out of the environment so that it is gone from
//! `/proc/PID/environ` too.
//!
//! `unsetenv` only drops the pointer from `environ`; the string itself
//! stays in the block the kernel set up at `execve`, and that block is
//! what `/proc/PID/environ` shows to the process's user (and root) for as
//! long as the process lives. So the value's bytes are overwritten in
//! place first, then the variable is removed.

use std::ffi::CStr;

extern "C" {
    /// The C library's environment (POSIX `environ`).
    static mut environ: *mut *mut libc::c_char;
}

/// Returns the value of the environment variable `name`, and removes it:
/// its bytes are overwritten with `\0` where they lie (the `execve`
/// environment block, or wherever `setenv` put them), then it is unset.
/// A value that is not UTF-8 is scrubbed and removed too, and `None` is
/// returned.
///
/// Call before starting threads: the environment is process-wide and
/// nothing here (or in the C library) stops another thread from reading
/// it meanwhile.
pub fn take_env_scrubbed(name: &str) -> Option<String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return None;
    }
    let prefix = format!("{name}=");
    let mut found: Option<Vec<u8>> = None;
    // SAFETY: `environ` is the C library's NULL-terminated array of
    // pointers to NUL-terminated strings; the caller guarantees no other
    // thread changes the environment meanwhile (documented contract). We
    // read each entry up to its NUL and overwrite only bytes before that
    // NUL, within the string's own allocation, so nothing outside the
    // strings is written and every string stays NUL-terminated.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = *p;
            let bytes = CStr::from_ptr(entry).to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                if found.is_none() {
                    found = Some(bytes[prefix.len()..].to_vec());
                }
                let value = entry.add(prefix.len());
                std::ptr::write_bytes(value, 0, bytes.len() - prefix.len());
            }
            p = p.add(1);
        }
    }
    found.as_ref()?;
    std::env::remove_var(name);
    found.and_then(|v| String::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_returned_removed_and_gone_from_the_environment() {
        std::env::set_var("WARDEN_TEST_SCRUB", "s3cr3t-value");
        assert_eq!(
            take_env_scrubbed("WARDEN_TEST_SCRUB").as_deref(),
            Some("s3cr3t-value")
        );
        assert!(std::env::var_os("WARDEN_TEST_SCRUB").is_none());
        assert_eq!(take_env_scrubbed("WARDEN_TEST_SCRUB"), None);
        assert_eq!(take_env_scrubbed("A=B"), None);
    }
}
