//! The guest's key-value resources as the host holds them. Apart from the rest of `kv` so
//! that the generated bindings can name them without importing the implementation.

use std::sync::Arc;

use super::backend::Backend;

/// An open bucket: the guest's `bucket` resource.
pub struct BucketHandle {
    pub(super) name: String,
    pub(super) backend: Arc<dyn Backend>,
}

/// A compare-and-swap read: the guest's `cas` resource.
pub struct CasHandle {
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) read: Option<Vec<u8>>,
}
