//! Helpers shared by the test binaries.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod model;
pub mod packet;
