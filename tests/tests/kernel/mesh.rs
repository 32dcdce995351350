//! Real agents on the kernel data path.

use crate::Scenario;

/// The scenarios of this module, in the order they run.
pub const SCENARIOS: &[Scenario] = &[];
