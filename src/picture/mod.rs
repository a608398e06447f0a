//! Pictures and bitstreams: the shared, dependency-free types that capture and media both use.
//!
//! This is a leaf module: it imports nothing from the rest of the crate, so `capture` (below
//! `media`) and `media` can both build on it without importing each other.
//!
//! - [`yuv`]: the I420 picture, conversions into it, and the buffer pool that recycles planes.
//! - [`mjpeg`]: a camera's JPEG frame decoded straight into a pooled I420 picture (no RGB step).
//! - [`rows`]: the row kernels of the YUYV and NV12 conversions (SSE2 / NEON, scalar fallback).
//! - [`annexb`]: H.264 Annex-B parsing: NAL units, access-unit splitting, SPS/PPS insertion.
//! - [`stamp`]: a 64-bit value (the test pattern's capture instant) drawn as a row of black and
//!   white cells, and read back.

pub mod annexb;
pub mod mjpeg;
pub mod rows;
pub mod stamp;
pub mod yuv;
