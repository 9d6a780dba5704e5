//! How the process gets its memory: in ordinary 4 KiB pages, not transparent huge pages.

/// Turn transparent huge pages off for this process (Linux `PR_SET_THP_DISABLE`; elsewhere
/// nothing). mimalloc 3, the binary's allocator, asks the kernel for huge pages on its whole
/// arena (`madvise(MADV_HUGEPAGE)` on 1 GiB), so on a kernel whose THP mode is `madvise` (the
/// usual default) every 2 MiB region the proxy touches becomes resident at once. Measured with
/// `BENCH_ONLY=streams scripts/bench`: 25 KB of RSS per open stream at 10,000 streams and 34 MB
/// idle with them, 17 KB and 19 MB without, CPU time alike. The binary calls this first thing
/// in `main`; pages already in use stay as they are. Returns whether the kernel took it.
pub fn no_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with an integer option and flag reads and writes no memory of ours.
        unsafe {
            libc::prctl(
                libc::PR_SET_THP_DISABLE,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_for_the_process_afterwards() {
        assert!(super::no_transparent_huge_pages());
        // SAFETY: as above; PR_GET_THP_DISABLE returns the flag.
        let zero: libc::c_ulong = 0;
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, zero, zero, zero, zero) };
        assert_eq!(flag, 1);
    }
}
