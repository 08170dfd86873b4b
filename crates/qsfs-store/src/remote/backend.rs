//! placeholder
pub struct ZdbBackend;
