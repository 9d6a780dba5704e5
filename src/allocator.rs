//! How the process gets its memory: from mimalloc ([`Mimalloc`], the binary's global allocator),
//! in ordinary 4 KiB pages, not transparent huge pages.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc as the global allocator. The proxy allocates small, short-lived buffers on every
/// request from several threads, where glibc's allocator spent a fifth of the CPU time
/// (perf). Not the `mimalloc` crate's `MiMalloc`, which asks for every block through
/// `mi_malloc_aligned`: past 1 KiB (a request's larger futures) that takes mimalloc's generic
/// aligned path, over-allocating, for an alignment every mimalloc block has anyway. Here a
/// layout aligned to a word or less goes through the plain entry points.
pub struct Mimalloc;

/// The alignment every mimalloc block has (its smallest block is a word).
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: every method hands mimalloc's own pointers back to it; the plain entry points are used
// only for alignments they guarantee (`WORD`), the aligned ones otherwise, as GlobalAlloc asks.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (mimalloc frees aligned blocks alike).
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

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

#[cfg(test)]
mod alloc_tests {
    use super::*;

    /// Every size and alignment a program asks for comes back aligned, writable, zeroed when
    /// asked, and keeps its bytes when it grows or shrinks.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 24, 40, 100, 1000, 1025, 1800, 3096, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{size}/{align}"
                    );
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let q = a.realloc(p, layout, size * 3);
                    assert!((q as usize).is_multiple_of(align), "grown {size}/{align}");
                    assert!(
                        (0..size).all(|i| *q.add(i) == i as u8),
                        "grown {size}/{align}"
                    );
                    let grown = Layout::from_size_align(size * 3, align).unwrap();
                    let r = a.realloc(q, grown, size.div_ceil(2));
                    assert!((r as usize).is_multiple_of(align), "shrunk {size}/{align}");
                    assert!((0..size / 2).all(|i| *r.add(i) == i as u8));
                    a.dealloc(r, Layout::from_size_align(size.div_ceil(2), align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!(
                        (z as usize).is_multiple_of(align) && (0..size).all(|i| *z.add(i) == 0)
                    );
                    a.dealloc(z, layout);
                }
            }
        }
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
