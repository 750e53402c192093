//! The worker's settings and secrets as the runtime holds them (`Env`), read into a checked `Config` once per isolate.

use std::cell::RefCell;
use std::rc::Rc;

use worker::Env;

use crate::lab::config::{Config, ConfigError};

/// Reads the configuration from the worker's `[vars]` and secrets, once per isolate: an isolate
/// serves one deployment, whose settings never change under it (a new setting or secret is a new
/// deployment, hence a new isolate). The result, error included, is cached.
pub fn config(env: &Env) -> Result<Rc<Config>, ConfigError> {
    thread_local! {
        static CACHED: RefCell<Option<Result<Rc<Config>, ConfigError>>> = const { RefCell::new(None) };
    }
    CACHED.with(|cached| {
        cached
            .borrow_mut()
            .get_or_insert_with(|| {
                let config = Config::from_lookup(|name| var(env, name))?;
                crate::lab::invocation::worst::check(&config)?;
                Ok(Rc::new(config))
            })
            .clone()
    })
}

/// One setting or secret by name, as text (`None` when it is not bound).
pub fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}
