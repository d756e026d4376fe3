//! The admin socket's group: `proxy.admin_group` resolved to a gid by
//! reading `/etc/group` itself, not through glibc's NSS.
//!
//! switchctl ships as one static binary (the `.deb`'s), and a static glibc
//! binary cannot load NSS modules safely. With Debian's default
//! `group: files systemd` in `/etc/nsswitch.conf`, a group missing from
//! `/etc/group` made `getgrnam_r` `dlopen` `libnss_systemd.so.2` into the
//! static binary, and the daemon died with SIGSEGV before it listened. So
//! the name is looked up in the files database only, which is where
//! `addgroup --system` (and the package's postinst) puts it; a group that
//! only a directory service (LDAP, sssd) knows is given by its numeric gid.

use std::path::Path;

/// Where group names are looked up.
pub const GROUP_FILE: &str = "/etc/group";

/// The gid of `group`: a number is the gid itself; a name is looked up in
/// `file` (`name:password:gid:members` lines). `Ok(None)`: no such name.
pub fn gid_of(group: &str, file: &Path) -> std::io::Result<Option<u32>> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Some(gid));
    }
    let text = std::fs::read_to_string(file)?;
    Ok(find(&text, group))
}

/// The gid of the entry named `group` in the text of a group file.
fn find(text: &str, group: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != group {
            return None;
        }
        let _password = fields.next()?;
        fields.next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "root:x:0:\n\
        # a comment line\n\
        switchctl-admins:x:998:alice\n\
        switchctl:x:997:alice,bob\n\
        broken:x:notanumber:\n\
        short:x\n";

    #[test]
    fn a_name_is_found_by_its_whole_field() {
        assert_eq!(find(FILE, "switchctl"), Some(997));
        assert_eq!(find(FILE, "switchctl-admins"), Some(998));
        assert_eq!(find(FILE, "root"), Some(0));
        assert_eq!(find(FILE, "switch"), None);
        assert_eq!(find(FILE, "alice"), None, "a member is not a group");
    }

    #[test]
    fn malformed_lines_match_nothing() {
        assert_eq!(find(FILE, "broken"), None);
        assert_eq!(find(FILE, "short"), None);
        assert_eq!(find(FILE, "# a comment line"), None);
        assert_eq!(find("", "switchctl"), None);
    }

    #[test]
    fn a_number_is_a_gid_and_a_name_is_read_from_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("group");
        std::fs::write(&file, FILE).expect("write group file");
        assert_eq!(gid_of("4242", &file).expect("numeric"), Some(4242));
        assert_eq!(gid_of("switchctl", &file).expect("lookup"), Some(997));
        assert_eq!(gid_of("nobody-here", &file).expect("lookup"), None);
        assert!(gid_of("switchctl", &dir.path().join("missing")).is_err());
    }
}
