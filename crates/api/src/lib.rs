//! Facts about the Kubernetes API that every part of rkube shares, with no I/O: which
//! resources are served and how they are named, label and field selectors, and the rules
//! for names and object metadata.

pub mod catalogue;
pub mod convert;
pub mod defaults;
pub mod managed;
pub mod names;
mod normalize;
pub mod omitempty;
pub mod printers;
pub mod protobuf;
pub mod quantity;
pub mod scheduling;
pub mod schemas;
pub mod selector;
pub mod strategic;
pub mod typed;
pub mod validation;
pub mod volumes;

pub use catalogue::{ResourceInfo, Scope, Subresource, find, group_versions, resources, reviews, storage_of};
