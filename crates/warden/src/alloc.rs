//! The global allocator: mimalloc, called as `std`'s own `System` allocator calls malloc.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`, even
//! when the alignment asked for is one `mi_malloc` gives anyway. mimalloc then takes its
//! generic aligned path for blocks over 1 KiB, and a proxied request makes about 16 of
//! those (header maps, buffers, the boxed request future). Calling `mi_malloc` for
//! alignments up to 16 bytes, the condition `std` uses for `System`, cut the allocator's
//! share of a request from 6 658 to 3 779 instructions (callgrind, warden full, 3 000
//! requests of the load benchmark; `benches/RESULTS.md`, "Proxy path, session 4").
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every `mi_malloc` block of at least this size has on 64-bit targets
/// (`MI_MAX_ALIGN_SIZE`); smaller blocks are aligned to their size rounded down to a
/// power of two, as with malloc.
const MIN_ALIGN: usize = 16;

/// Whether plain `mi_malloc(size)` is aligned enough for `align`.
const fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

/// mimalloc as the global allocator.
pub struct Mimalloc;

// SAFETY: each method forwards to the mimalloc function with the same contract as the
// `GlobalAlloc` method (null on failure, the block freed by `mi_free`, `realloc` keeping
// the contents up to the smaller size). Plain `mi_malloc`/`mi_zalloc`/`mi_realloc` are
// used only when `plain` holds, where their alignment guarantee covers the layout's;
// otherwise the aligned variants are called with the layout's alignment, exactly as the
// `mimalloc` crate does for every call.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from this allocator.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_has_its_alignment_and_keeps_its_contents() {
        let a = Mimalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 3, 7, 8, 15, 16, 17, 100, 1024, 1025, 4000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero size; the block is written within its size, read
                // back, grown, and freed once with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    let q = a.realloc(p, layout, size * 2 + 1);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    for i in 0..size {
                        assert_eq!(*q.add(i), (i % 251) as u8);
                    }
                    a.dealloc(
                        q,
                        Layout::from_size_align(size * 2 + 1, align).expect("layout"),
                    );
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
