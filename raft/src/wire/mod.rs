//! The one place where wire (`kvmesh.v1`) and model types meet, one module
//! per direction: [`to_pb`] builds what the API answers, [`from_pb`] checks
//! and turns requests into model values.
//!
//! They live here rather than in the proto crate because the proto crate
//! depends on nothing internal, and the model is defined in this one.

pub mod from_pb;
pub mod to_pb;
