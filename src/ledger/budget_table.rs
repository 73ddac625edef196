//! Budgets kept in the ledger database, one table per store, rows keyed by
//! namespace and name. What a change does is decided here, once; each
//! backend only reads the row under a lock and writes the result back.

use crate::budget::definition;
use crate::error::{CoreError, CoreResult};

/// The longest budget name.
pub const MAX_NAME_CHARS: usize = 128;

/// One stored budget. A deleted budget keeps its row (`deleted_us`) until a
/// budget of the same name is created again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBudget {
    pub namespace: String,
    pub name: String,
    /// The definition's canonical JSON (`budget::definition`).
    pub definition: String,
    pub created_us: i64,
    pub updated_us: i64,
    pub deleted_us: Option<i64>,
    /// Spend counts from this time on, when the budget's spend was reset.
    pub reset_us: Option<i64>,
}

impl StoredBudget {
    pub fn is_live(&self) -> bool {
        self.deleted_us.is_none()
    }
}

/// What to do to the budget `(namespace, name)`.
#[derive(Clone, Debug)]
pub enum BudgetChange {
    /// A new budget with this definition (a deleted one of the name is replaced).
    Create(String),
    /// A new definition for a live budget.
    Update(String),
    /// Soft-deletes a live budget.
    Delete,
    /// Starts counting a live budget's spend afresh, from now.
    Reset,
}

/// The budgets table of a store.
pub trait BudgetTable {
    /// The budgets of `namespace` (every namespace when `None`), ordered by
    /// namespace then name; deleted ones only with `include_deleted`.
    fn list_budgets(
        &self,
        namespace: Option<&str>,
        include_deleted: bool,
    ) -> CoreResult<Vec<StoredBudget>>;
    /// The row of `(namespace, name)`, deleted or not.
    fn budget_row(&self, namespace: &str, name: &str) -> CoreResult<Option<StoredBudget>>;
    /// Applies `change` atomically (`apply_change` on the row read under a
    /// lock) and returns the row as written.
    fn change_budget(
        &self,
        namespace: &str,
        name: &str,
        change: BudgetChange,
    ) -> CoreResult<StoredBudget>;

    /// The live budget `(namespace, name)`; a `ValueError`-like error naming
    /// `name` when there is none.
    fn get_budget(&self, namespace: &str, name: &str) -> CoreResult<StoredBudget> {
        check_key(namespace, name)?;
        match self.budget_row(namespace, name)? {
            Some(row) if row.is_live() => Ok(row),
            _ => Err(unknown(namespace, name)),
        }
    }
}

fn unknown(namespace: &str, name: &str) -> CoreError {
    CoreError::InvalidArgument(
        "name",
        format!("no budget {name:?} in namespace {namespace:?}"),
    )
}

/// Budget names are short identifiers: letters, digits and `_ . : -`, so
/// they fit a URL path and a log line as they are.
pub fn check_name(name: &str) -> CoreResult<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(CoreError::InvalidArgument(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters, got {chars}"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(CoreError::InvalidArgument(
            "name",
            format!("may hold only letters, digits and _ . : -, got {name:?}"),
        ));
    }
    Ok(())
}

/// The namespace and name of a stored budget, checked before any SQL.
pub fn check_key(namespace: &str, name: &str) -> CoreResult<()> {
    if namespace.is_empty() || namespace.chars().count() > 256 || namespace.contains('\0') {
        return Err(CoreError::InvalidArgument(
            "namespace",
            "must be 1 to 256 characters without NUL bytes".into(),
        ));
    }
    check_name(name)
}

/// Checks a change's arguments before any SQL: the key, and that a
/// definition builds a budget named `name`.
pub fn check_change(namespace: &str, name: &str, change: &BudgetChange) -> CoreResult<()> {
    check_key(namespace, name)?;
    if let BudgetChange::Create(json) | BudgetChange::Update(json) = change {
        definition::from_json(name, json)?;
    }
    Ok(())
}

/// The row after `change`, given the row before it (read under a lock).
pub fn apply_change(
    namespace: &str,
    name: &str,
    existing: Option<StoredBudget>,
    change: BudgetChange,
    now_us: i64,
) -> CoreResult<StoredBudget> {
    let live = existing.filter(StoredBudget::is_live);
    match (live, change) {
        (Some(_), BudgetChange::Create(_)) => Err(CoreError::Conflict(format!(
            "a budget {name:?} already exists in namespace {namespace:?}"
        ))),
        (None, BudgetChange::Create(definition)) => Ok(StoredBudget {
            namespace: namespace.to_string(),
            name: name.to_string(),
            definition,
            created_us: now_us,
            updated_us: now_us,
            deleted_us: None,
            reset_us: None,
        }),
        (None, _) => Err(unknown(namespace, name)),
        (Some(row), BudgetChange::Update(definition)) => Ok(StoredBudget {
            definition,
            updated_us: now_us,
            ..row
        }),
        (Some(row), BudgetChange::Delete) => Ok(StoredBudget {
            deleted_us: Some(now_us),
            updated_us: now_us,
            ..row
        }),
        (Some(row), BudgetChange::Reset) => Ok(StoredBudget {
            reset_us: Some(now_us),
            updated_us: now_us,
            ..row
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(now: i64) -> StoredBudget {
        apply_change("ns", "b", None, BudgetChange::Create("{}".into()), now).unwrap()
    }

    #[test]
    fn a_live_budget_cannot_be_created_twice_but_a_deleted_one_can() {
        let row = created(1);
        let again = apply_change(
            "ns",
            "b",
            Some(row.clone()),
            BudgetChange::Create("{}".into()),
            2,
        );
        assert!(matches!(again, Err(CoreError::Conflict(_))));
        let deleted = apply_change("ns", "b", Some(row), BudgetChange::Delete, 3).unwrap();
        assert_eq!(deleted.deleted_us, Some(3));
        let back = apply_change(
            "ns",
            "b",
            Some(deleted),
            BudgetChange::Create("{}".into()),
            4,
        )
        .unwrap();
        assert_eq!(
            (back.created_us, back.deleted_us, back.reset_us),
            (4, None, None)
        );
    }

    #[test]
    fn only_live_budgets_change() {
        let deleted = apply_change("ns", "b", Some(created(1)), BudgetChange::Delete, 2).unwrap();
        for change in [
            BudgetChange::Update("{}".into()),
            BudgetChange::Delete,
            BudgetChange::Reset,
        ] {
            let err = apply_change("ns", "b", Some(deleted.clone()), change, 3).unwrap_err();
            assert!(err.to_string().starts_with("name: no budget"), "{err}");
        }
        let reset = apply_change("ns", "b", Some(created(1)), BudgetChange::Reset, 5).unwrap();
        assert_eq!(
            (reset.reset_us, reset.updated_us, reset.created_us),
            (Some(5), 5, 1)
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("monthly-openai_2026.q1:x").is_ok());
        for bad in ["", "has space", "slash/", "ünï", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_key("", "b").is_err());
    }
}
