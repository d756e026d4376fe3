//! The process's allocator: jemalloc, set to hand freed memory back to the
//! kernel by itself, a second after it is freed.
//!
//! Memory is freed in waves: connections close at the end of an attack or
//! a traffic peak, and idle keep-alive connections park, giving back
//! hyper's ~16 KiB of buffers each (`switchctl_proxy`'s `park.rs`). glibc's
//! malloc kept what was freed in the middle of its arenas, interleaved with
//! the few long-lived bytes of each connection; the daemon called
//! `malloc_trim` after each wave, and still 3.3–3.7 KiB of every parked
//! connection stayed resident.
//!
//! jemalloc keeps objects of one size class together, so the pages of freed
//! buffers empty out whole, and with the options below a background thread
//! (the daemon's; CLI commands start none) returns them within about a
//! second (`dirty_decay_ms`), at once unmapped rather than kept "muzzy"
//! (`muzzy_decay_ms: 0`). Measured: 2.2 KiB per parked connection then
//! (1.1 KiB since the parked connection got a task of its own), and 4 %
//! fewer instructions per proxied request than glibc's malloc
//! (docs/benchmarks.md, "Session 7").
//!
//! jemalloc's bookkeeping for each slab it has ever made is never freed,
//! and by default a size class of 8 KiB (hyper's read and write buffers)
//! gets a slab per buffer or two: after a burst of new connections, each
//! still unparked, that bookkeeping stayed behind at ~0.2 KiB per
//! connection. Slabs of 16 pages for the classes from 4 to 16 KiB
//! (`slab_sizes`) hold five to eight buffers each (docs/benchmarks.md,
//! "Session 8").

/// The allocator of every allocation in the process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once as it starts (its `malloc_conf`; the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them). The
/// background thread is not among them: every CLI command would create it
/// too, for nothing. The daemon starts it ([`purge_in_background`]).
#[export_name = "_rjem_malloc_conf"]
#[used]
static MALLOC_CONF: &[u8; 62] = b"dirty_decay_ms:1000,muzzy_decay_ms:0,slab_sizes:4097-16384:16\0";

/// Start jemalloc's background thread, which hands pages freed a
/// `dirty_decay_ms` ago back to the kernel. The daemon calls it as it
/// starts; without it, freed pages would go back only when some later
/// allocation or free passes by.
pub fn purge_in_background() -> Result<(), tikv_jemalloc_ctl::Error> {
    tikv_jemalloc_ctl::background_thread::write(true)
}
