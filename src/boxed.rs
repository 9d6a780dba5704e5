//! Futures boxed where they are made. `Box::pin(make())` builds the future on the stack and
//! then copies it whole into its box: as many bytes as its largest path holds (kilobytes for a
//! request's steps), written to memory the cache does not hold yet, on every request. With the
//! box allocated first, the compiler builds the future in it instead (LLVM's call-slot
//! optimisation; callgrind shows no copy left).
//!
//! A rare way's future ([`apart`]) is boxed behind `dyn Future` instead, so that its poll is
//! never inlined into its caller's: the room a poll function's frame reserves is the largest
//! any way through it needs, and the Live session's, the router's and a new upstream
//! connection's (tens of kilobytes) made every request's poll reserve it, probing each 4 KiB
//! page of it.

use std::pin::Pin;

/// `Box::pin(make())`, the future built in its box.
#[inline(always)]
pub fn pinned<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// `Box::pin(make())` as a `dyn Future`: for a rare way whose future is large, so that its
/// poll stays out of the caller's (see the module's note). The server's dispatch reserved 80
/// KB of stack at each poll for a Live session's and the router's, the upstream client 40 KB
/// for HTTP/2's and for a new connection's: every request's polls probed 29 pages of stack.
#[inline(never)]
pub fn apart<'a, F>(
    make: impl FnOnce() -> F,
) -> Pin<Box<dyn Future<Output = F::Output> + Send + 'a>>
where
    F: Future + Send + 'a,
{
    Box::pin(make())
}
