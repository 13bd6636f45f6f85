//! Shared helpers for the root package's integration tests.
//!
//! A test file uses them with `mod support;` and then `support::browser::Browser`.
#![allow(dead_code)]

pub mod browser;
