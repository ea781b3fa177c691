//! Everything that talks to the operating system. All of cachem-core's
//! `unsafe` lives below this module; the layout engine above it has none.

pub mod failpoint;
pub mod file;
pub mod map;
pub mod mutex;
pub mod process;
pub mod seqlock;
