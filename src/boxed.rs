//! Futures boxed where they are made. `Box::pin(make())` builds the future on the stack and
//! then copies it whole into its box: as many bytes as its largest path holds (kilobytes for a
//! request's steps), written to memory the cache does not hold yet, on every request. With the
//! box allocated first, the compiler builds the future in it instead (LLVM's call-slot
//! optimisation; callgrind shows no copy left).

use std::pin::Pin;

/// `Box::pin(make())`, the future built in its box.
#[inline(always)]
pub fn pinned<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
