//! The system user and group database (NSS, via `getpwnam_r` and friends).

use std::io;

use nix::unistd::{Gid, Group, Uid, User};

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// Uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

fn info(u: User) -> UserInfo {
    UserInfo {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }
}

/// Looks a user up by name.
///
/// # Errors
/// The lookup error (not "no such user", which is `Ok(None)`).
pub fn user_by_name(name: &str) -> io::Result<Option<UserInfo>> {
    User::from_name(name)
        .map(|u| u.map(info))
        .map_err(io::Error::from)
}

/// Looks a user up by uid.
///
/// # Errors
/// The lookup error.
pub fn user_by_uid(uid: u32) -> io::Result<Option<UserInfo>> {
    User::from_uid(Uid::from_raw(uid))
        .map(|u| u.map(info))
        .map_err(io::Error::from)
}

/// The gid of a group name.
///
/// # Errors
/// The lookup error.
pub fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(io::Error::from)
}

/// The name of a gid.
///
/// # Errors
/// The lookup error.
pub fn group_name(gid: u32) -> io::Result<Option<String>> {
    Group::from_gid(Gid::from_raw(gid))
        .map(|g| g.map(|g| g.name))
        .map_err(io::Error::from)
}

/// Every gid of a user: the primary one and the supplementary ones
/// (`getgrouplist`).
///
/// # Errors
/// The lookup error, or an invalid name.
pub fn groups_of_user(name: &str, primary_gid: u32) -> io::Result<Vec<u32>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    nix::unistd::getgrouplist(&cname, Gid::from_raw(primary_gid))
        .map(|v| v.into_iter().map(Gid::as_raw).collect())
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known() -> io::Result<()> {
        let root = user_by_name("root")?;
        assert_eq!(root.as_ref().map(|u| u.uid), Some(0));
        assert_eq!(user_by_uid(0)?.map(|u| u.name), Some("root".into()));
        assert_eq!(group_by_name("root")?, Some(0));
        assert_eq!(group_name(0)?, Some("root".into()));
        assert!(groups_of_user("root", 0)?.contains(&0));
        assert_eq!(user_by_name("no-such-user-wdn")?, None);
        Ok(())
    }
}
