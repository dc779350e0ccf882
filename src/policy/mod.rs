//! Request policies, one file each. Each owns its config form, compiled form and tests.
//! Later issues add authentication, authorization and limits here.

pub mod headers;
