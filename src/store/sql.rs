//! The writer's SQL, once, for both backends.
//!
//! The writer runs synchronously on its own thread (see `writer`), against
//! SQLite through rusqlite or against PostgreSQL through the synchronous
//! `postgres` client. Statements are written once, with `$1`-style
//! placeholders and SQL both databases accept; [`Conn`] runs them on
//! either. What truly differs between the backends (id allocation, claims,
//! fencing) lives in `writer` behind [`Dialect`].

use std::collections::HashMap;

use postgres::types::{IsNull, ToSql as PgToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::StoreError;

/// A statement parameter, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// Anything that binds as a [`Value`].
pub(super) trait Param {
    fn value(&self) -> Value<'_>;
}

impl Param for i64 {
    fn value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}

impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}

impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

impl PgToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            // Where PostgreSQL inferred a narrower integer for a parameter
            // (e.g. next to an int literal), send that width.
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Text(t) => t.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value by the delegate above.
        true
    }

    to_sql_checked!();
}

/// Column access by position, the same for both backends.
pub(super) trait Row {
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
}

impl Row for postgres::Row {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

/// One open transaction of the writer.
pub(super) trait Conn {
    /// Runs a statement; returns the number of rows it changed.
    fn exec(&mut self, sql: &'static str, params: &[&dyn Param]) -> Result<u64, StoreError>;

    /// Runs a query and maps every row.
    fn query<T>(
        &mut self,
        sql: &'static str,
        params: &[&dyn Param],
        map: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError>;

    /// Runs a query and maps its first row, if any.
    fn query_opt<T>(
        &mut self,
        sql: &'static str,
        params: &[&dyn Param],
        map: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut map = Some(map);
        let mut rows = self.query(sql, params, |r| match map.take() {
            Some(f) => f(r).map(Some),
            None => Ok(None),
        })?;
        Ok(rows.drain(..).next().flatten())
    }
}

fn values<'a>(params: &'a [&'a dyn Param]) -> Vec<Value<'a>> {
    params.iter().map(|p| p.value()).collect()
}

/// SQLite reads `$1` as a named parameter; `?1` is its positional form.
fn sqlite_text(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A SQLite transaction (or connection) with rusqlite's statement cache.
pub(super) struct Lite<'c> {
    pub conn: &'c rusqlite::Connection,
    /// `$n` texts translated once per statement.
    pub texts: &'c mut HashMap<&'static str, String>,
}

impl Lite<'_> {
    fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<rusqlite::CachedStatement<'_>, StoreError> {
        let text = self.texts.entry(sql).or_insert_with(|| sqlite_text(sql));
        Ok(self.conn.prepare_cached(text)?)
    }
}

impl Conn for Lite<'_> {
    fn exec(&mut self, sql: &'static str, params: &[&dyn Param]) -> Result<u64, StoreError> {
        let values = values(params);
        let mut stmt = self.statement(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))? as u64)
    }

    fn query<T>(
        &mut self,
        sql: &'static str,
        params: &[&dyn Param],
        mut map: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let values = values(params);
        let mut stmt = self.statement(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
        Ok(out)
    }
}

/// A PostgreSQL transaction with the connection's prepared statements.
pub(super) struct Pg<'c, 't> {
    pub tx: &'c mut postgres::Transaction<'t>,
    pub statements: &'c mut HashMap<&'static str, postgres::Statement>,
}

impl Pg<'_, '_> {
    fn statement(&mut self, sql: &'static str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

fn pg_params<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn PgToSql + Sync)> {
    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect()
}

impl Conn for Pg<'_, '_> {
    fn exec(&mut self, sql: &'static str, params: &[&dyn Param]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let values = values(params);
        Ok(self.tx.execute(&stmt, &pg_params(&values))?)
    }

    fn query<T>(
        &mut self,
        sql: &'static str,
        params: &[&dyn Param],
        mut map: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let stmt = self.statement(sql)?;
        let values = values(params);
        let rows = self.tx.query(&stmt, &pg_params(&values))?;
        rows.iter().map(|r| map(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_placeholders_become_positional_for_sqlite() {
        assert_eq!(
            sqlite_text("UPDATE t SET a = $1 WHERE b = $2 AND c <> $1 AND d = '$x'"),
            "UPDATE t SET a = ?1 WHERE b = ?2 AND c <> ?1 AND d = '$x'"
        );
    }

    #[test]
    fn one_statement_text_runs_on_sqlite_with_every_value_kind() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d TEXT)")
            .unwrap();
        let mut texts = HashMap::new();
        let mut lite = Lite {
            conn: &conn,
            texts: &mut texts,
        };
        let none: Option<String> = None;
        let blob = vec![1u8, 2, 3];
        let n = lite
            .exec(
                "INSERT INTO t (a, b, c, d) VALUES ($1, $2, $3, $4)",
                &[&7i64, &"seven", &blob, &none],
            )
            .unwrap();
        assert_eq!(n, 1);
        let got = lite
            .query_opt(
                "SELECT a, b, d FROM t WHERE a = $1 AND b = $2",
                &[&7i64, &"seven"],
                |r| Ok((r.int(0)?, r.text(1)?, r.opt_text(2)?)),
            )
            .unwrap();
        assert_eq!(got, Some((7, "seven".to_owned(), None)));
        let missing = lite
            .query_opt("SELECT a FROM t WHERE a = $1", &[&8i64], |r| r.int(0))
            .unwrap();
        assert_eq!(missing, None);
    }
}
