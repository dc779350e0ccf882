//! What the benches and the integration tests reach inside the crate, and nothing more.
//! Every other module is private to the crate (`pub(crate)`), so rustc reports what
//! nothing uses; an item listed here stays reachable for them. `main.rs` uses only the
//! crate root (`run`, `check`, `upgrade`, `hash_key`).

pub mod cache {
    pub use crate::cache::storage::{EntryTag, StaleWindows, SHARDS};
    pub use crate::cache::MemoryStorage;
    pub mod key {
        pub use crate::cache::key::{cache_key, variance, VaryOn};
    }
    pub mod rules {
        pub use crate::cache::rules::{decide, StoreInput};
    }
}

pub mod clock {
    pub use crate::clock::Clock;
}

pub mod config {
    /// The file format: its types are the contract, all of them public.
    pub use crate::config::model;
    pub use crate::config::{route_traffic, traffic};
    pub mod load {
        pub use crate::config::load::parse;
    }
    pub mod units {
        pub use crate::config::units::RateUnit;
    }
}

pub mod path {
    pub use crate::path::normalize;
}

pub mod policy {
    pub use crate::policy::PolicySet;
    pub mod versions {
        pub use crate::policy::versions::Versions;
    }
    pub mod headers {
        pub use crate::policy::headers::{
            new_request_id, set_forwarded, strip_identity, well_formed_request_id, HeaderOps,
        };
    }
    pub mod jwt {
        pub use crate::policy::jwt::unix_now;
        pub mod keys {
            pub use crate::policy::jwt::keys::{Alg, KeySet, VerifyKey};
        }
        pub mod token {
            pub use crate::policy::jwt::token::Parsed;
        }
    }
}

pub mod runtime {
    pub mod router {
        pub use crate::runtime::router::{host_of, Conditions, Entry, PathMatch, Router};
    }
}

pub mod store {
    pub use crate::store::{Registry, DEFAULT_MAX_KEYS};
    pub mod counts {
        pub use crate::store::counts::QuotaTable;
    }
    pub mod gcra {
        pub use crate::store::gcra::{Gcra, RateTable};
    }
    pub mod window {
        pub use crate::store::window::window_at;
    }
}

pub mod upstream {
    pub use crate::upstream::{Plan, Upstream};
    pub mod split {
        pub use crate::upstream::split::{Request, Split};
    }
}
