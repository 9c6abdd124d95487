//! Keeping the desktop app small (measured by `scripts/measure-desktop.sh`; README,
//! "Desktop footprint"). Most of the footprint is WebKitGTK and the GL driver it loads
//! (Mesa's, which maps libLLVM); the heap is a few MB. What helps, measured:
//!
//! * WebKit's DMA-BUF renderer draws the page with GL in the web process; without it
//!   (`WEBKIT_DISABLE_DMABUF_RENDERER=1`) the web process holds about 70 MB less
//!   anonymous memory for this page, which needs no GPU;
//! * GTK 3 on X11 opens the GL driver when it opens the display, to pick visuals, though
//!   it draws with cairo; `GDK_GL=disable` leaves that to WebKit, so an app started at
//!   login that never opens its window never maps libLLVM (about 45 MB RSS). X11 only:
//!   on Wayland the GL path of GTK may be what shows the page;
//! * WebKit keeps its network process for the life of the app even with no web view
//!   (tauri keeps the web context alive on Linux for that reason): once the window is
//!   closed it is ended, and WebKit starts a new one when the window opens again;
//! * what stays resident after the window closed is mostly pages of mapped files:
//!   WebKit's, JavaScriptCore's and Mesa's code and read-only data (libLLVM alone ~43 MB),
//!   touched to show the window and never again by the tray. They are clean, so the
//!   kernel would reclaim them under memory pressure; [`page_out_mapped_files`] has it
//!   do so at once (the window closed, or started hidden and settled): 155 → 84 MB
//!   RSS for the app's process after closing, 76 → 34 MB started hidden. What is left
//!   is anonymous memory (heap, relocated data of the libraries) and pages other
//!   processes map too (the X server maps the same Mesa and LLVM), which stay.
//!
//! A value the user set for any of these variables is left alone.

/// Set the environment for WebKitGTK and GTK. Call while the process has one thread
/// (before the runtime starts): `setenv` races with threads reading the environment.
pub fn prepare_env() {
    if !cfg!(any(
        target_os = "linux",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    )) {
        return;
    }
    let unset = |k: &str| std::env::var_os(k).is_none();
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if unset("WEBKIT_DISABLE_DMABUF_RENDERER") {
        std::env::set_var("WEBKIT_DISABLE_DMABUF_RENDERER", "1");
    }
    if set("DISPLAY") && !set("WAYLAND_DISPLAY") && unset("GDK_GL") && unset("GDK_BACKEND") {
        std::env::set_var("GDK_GL", "disable");
    }
}

/// End WebKit's network process once no web view is left (the window is closed). The
/// process is found among this process's children by its executable's name.
#[cfg(target_os = "linux")]
pub fn end_network_process() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let mut children: Vec<i32> = Vec::new();
    for t in tasks.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    for pid in children {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == "WebKitNetworkProcess") {
            // SAFETY: kill(2) on a pid of our own child, read just now; no memory involved.
            let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
            if rc == 0 {
                tracing::info!(pid, "window closed: ended WebKit's network process");
            } else {
                tracing::debug!(pid, error = %std::io::Error::last_os_error(), "could not end WebKit's network process");
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn end_network_process() {}

/// Give back the pages of mapped files (libraries, this binary) that nothing touches
/// now: after the window closed, most of WebKit's, Mesa's and GTK's code and data is
/// resident only because the window used it. `MADV_PAGEOUT` asks the kernel to reclaim
/// them now rather than under memory pressure; it loses nothing (a page that is used
/// again is read back from the page cache or the file), so what stays resident is
/// what the tray app really uses. Anonymous memory and shared memory are left alone.
#[cfg(target_os = "linux")]
pub fn page_out_mapped_files() -> usize {
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

#[cfg(not(target_os = "linux"))]
pub fn page_out_mapped_files() -> usize {
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

        assert!(page_out_mapped_files() > 0);
        let after = resident_kib(addr as usize);
        assert!(after < 1024, "still resident after paging out: {after} KiB");
        assert!(view == &content[..], "the contents read back the same");

        // SAFETY: unmapping what was mapped above; `view` is not used afterwards.
        unsafe { libc::munmap(addr, len) };
    }
}
