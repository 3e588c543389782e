//! The one integration-test binary: each module tests one area through the public API.

mod journal;
mod model;
mod model_props;
