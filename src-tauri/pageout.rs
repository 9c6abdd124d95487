//! Giving back what only starting (or a closed window) used.
//!
//! A process keeps the pages of its libraries and its own binary resident once they
//! were touched, even if it never runs that code again: the desktop build links
//! WebKitGTK, so even `tokenwarden daemon` from it starts with ~45 MB of library pages
//! the dynamic linker and the initialisers touched; the desktop app after its window
//! closed holds WebKit's, JavaScriptCore's and Mesa's. They are clean pages of files,
//! so the kernel would reclaim them under memory pressure; [`mapped_files`] has it do
//! so at once. Measured in `scripts/measure-desktop.sh` (docs/footprint.md).
//!
//! The kernel does this only for files the process owns or may write (so that one user
//! cannot evict another's pages): for root (the daemon as a system service) that is
//! every library; for a normal user only files of their own, such as a binary
//! installed with `cargo install` — the system's libraries stay resident. Mappings the
//! kernel would ignore are skipped.

/// Give back the pages of mapped files (libraries, this binary) that nothing touches
/// now, where the kernel allows it (see the module). `MADV_PAGEOUT` asks the kernel to
/// reclaim them now rather than under memory pressure; it loses nothing (a page used
/// again is read back from the page cache or the file, a page of the mapping that was
/// written, such as a library's relocated data, from swap), and pages other processes
/// map as well stay. Anonymous mappings and shared memory are not touched. Returns how
/// many mappings were advised.
#[cfg(target_os = "linux")]
pub fn mapped_files() -> usize {
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut ranges = 0;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(_perms), Some(_off), Some(_dev), Some(inode), Some(path)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        // Regular files only: not [heap]/[stack]/[vdso], SysV or memfd shared memory,
        // device mappings or files deleted since.
        if inode == "0"
            || !path.starts_with('/')
            || path.starts_with("/dev/")
            || path.starts_with("/SYSV")
            || path.starts_with("/memfd:")
            || parts.next().is_some()
        {
            continue;
        }
        if !may_page_out(path) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        // SAFETY: a hint about a range this process has mapped (just read from its own
        // maps); MADV_PAGEOUT never changes the contents a later access sees. A range
        // unmapped meanwhile makes madvise fail with ENOMEM, which is ignored.
        if unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_PAGEOUT) } == 0 {
            ranges += 1;
        }
    }
    ranges
}

/// The kernel's rule for paging out a file's pages (`can_do_file_pageout`): the file
/// is the caller's, or the caller may write it (root may do both).
#[cfg(target_os = "linux")]
fn may_page_out(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 || std::fs::metadata(path).is_ok_and(|m| m.uid() == euid) {
        return true;
    }
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: access(2) on a NUL-terminated path; no memory is written.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(not(target_os = "linux"))]
pub fn mapped_files() -> usize {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// Resident KiB of the mapping that starts at `addr`, from this process's smaps.
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "mapping {start} not in smaps");
        lines
            .find(|l| l.starts_with("Rss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    #[test]
    fn pages_of_mapped_files_leave_the_resident_set_and_read_back_the_same() {
        // A file on a disk (next to the test binary), not tmpfs: shared memory is
        // left alone on purpose.
        let dir = tempfile::tempdir_in(std::env::current_exe().unwrap().parent().unwrap()).unwrap();
        let path = dir.path().join("mapped.bin");
        let len = 8 << 20;
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&content).unwrap();
        f.sync_all().unwrap(); // clean pages: nothing to write back first
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh read-only private mapping of a file this test owns; it is
        // read through a slice only while mapped, and unmapped at the end.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: `addr` maps `len` readable bytes until munmap below.
        let view = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        assert!(view == &content[..]);
        let before = resident_kib(addr as usize);
        assert!(
            before >= 7 * 1024,
            "touched pages are resident: {before} KiB"
        );

        assert!(mapped_files() > 0);
        let after = resident_kib(addr as usize);
        assert!(after < 1024, "still resident after paging out: {after} KiB");
        assert!(view == &content[..], "the contents read back the same");

        // SAFETY: unmapping what was mapped above; `view` is not used afterwards.
        unsafe { libc::munmap(addr, len) };
    }
}
