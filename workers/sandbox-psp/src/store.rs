//! Where the API keeps its objects. The Durable Object implements [`Store`]
//! over SQLite (`durable.rs`); the unit tests use [`MemStore`].

use crate::objects::Object;

/// A storage failure. Never the caller's fault: it becomes a 500 `api_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

pub trait Store {
    fn get(&self, id: &str) -> Result<Option<Object>, StoreError>;
    /// Inserts or replaces by id.
    fn put(&mut self, object: &Object) -> Result<(), StoreError>;
    /// Every object whose transfer group is `group`, oldest first.
    fn in_transfer_group(&self, group: &str) -> Result<Vec<Object>, StoreError>;
    /// Every object, oldest first.
    fn all(&self) -> Result<Vec<Object>, StoreError>;
}

/// An in-memory store for tests, keeping insertion order.
#[derive(Debug, Default)]
pub struct MemStore {
    pub objects: Vec<Object>,
}

impl Store for MemStore {
    fn get(&self, id: &str) -> Result<Option<Object>, StoreError> {
        Ok(self.objects.iter().find(|o| o.id() == id).cloned())
    }

    fn put(&mut self, object: &Object) -> Result<(), StoreError> {
        match self.objects.iter_mut().find(|o| o.id() == object.id()) {
            Some(existing) => *existing = object.clone(),
            None => self.objects.push(object.clone()),
        }
        Ok(())
    }

    fn in_transfer_group(&self, group: &str) -> Result<Vec<Object>, StoreError> {
        Ok(self.objects.iter().filter(|o| o.transfer_group().as_deref() == Some(group)).cloned().collect())
    }

    fn all(&self) -> Result<Vec<Object>, StoreError> {
        Ok(self.objects.clone())
    }
}
