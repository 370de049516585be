//! [`Services`]: the in-process handles apps publish for one another, by name.
//!
//! An app that others build on (the blob store) publishes a typed handle when it starts; an
//! app that needs it (the forge storing packs) looks it up by name and type, in-process, with
//! no network hop and no token. Apps start in the order the node lists them, so a dependent
//! app either is listed after the one it uses or looks the handle up when it first needs it.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Handles published by apps, by name.
#[derive(Default)]
pub struct Services {
    map: RwLock<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.map.read().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("Services").field("names", &names).finish()
    }
}

impl Services {
    /// Publishes `service` under `name`, replacing what was there.
    pub fn publish<T: Any + Send + Sync>(&self, name: &str, service: Arc<T>) {
        if let Ok(mut map) = self.map.write() {
            map.insert(name.to_string(), service);
        }
    }

    /// The handle published under `name`, if there is one of type `T`.
    pub fn get<T: Any + Send + Sync>(&self, name: &str) -> Option<Arc<T>> {
        let service = self.map.read().ok()?.get(name)?.clone();
        service.downcast::<T>().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_found_by_name_and_type() {
        let services = Services::default();
        services.publish("blob", Arc::new(7u32));
        assert_eq!(services.get::<u32>("blob").as_deref(), Some(&7));
        assert!(services.get::<String>("blob").is_none(), "another type");
        assert!(services.get::<u32>("forge").is_none(), "another name");
    }
}
