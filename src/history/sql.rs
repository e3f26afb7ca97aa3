//! Hand-built batched statements for what sea-orm has no builder for: many rows updated with
//! different values in one statement (`WITH v(...) AS (VALUES ...) UPDATE ... FROM v`), which
//! PostgreSQL and SQLite (3.33+) both understand.

use sea_orm::{DbBackend, Statement, Value};

/// A statement being written: SQL text plus its bound values, with the backend's placeholders.
pub struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
    /// The text ends with a row, so the next row needs a comma.
    after_row: bool,
}

impl Sql {
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
            after_row: false,
        }
    }

    pub fn push_str(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self.after_row = false;
        self
    }

    /// Appends one row `(p1, p2, ...)` of placeholders bound to `values`, comma-separated from
    /// the row before.
    pub fn row(&mut self, values: impl IntoIterator<Item = Value>) -> &mut Self {
        if self.after_row {
            self.text.push_str(", ");
        }
        self.after_row = true;
        self.text.push('(');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.values.push(value);
            match self.backend {
                DbBackend::Postgres => self.text.push_str(&format!("${}", self.values.len())),
                _ => self.text.push('?'),
            }
        }
        self.text.push(')');
        self
    }

    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_per_backend() {
        let mut pg = Sql::new(DbBackend::Postgres);
        pg.push_str("VALUES ")
            .row([1i64.into(), "a".into()])
            .row([2i64.into(), "b".into()]);
        assert_eq!(pg.build().sql, "VALUES ($1, $2), ($3, $4)");
        let mut lite = Sql::new(DbBackend::Sqlite);
        lite.push_str("VALUES ")
            .row([1i64.into()])
            .row([2i64.into()]);
        assert_eq!(lite.build().sql, "VALUES (?), (?)");
    }
}
