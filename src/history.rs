//! The SQL system of record (sea-orm over PostgreSQL or SQLite). A job is written here before its
//! submit is answered; every later transition is written behind in batches (`writer`). It serves
//! history reads, the reconciler's list of unfinished jobs, and the deletes retention asks for.
//!
//! It speaks in rows, not in the scheduler's types: the scheduler converts (`scheduler/durable.rs`).

pub mod commit;
pub mod entity;
mod sql;
pub mod stats;
mod writer;

use std::time::Duration;

use conveyor_migrations::{Migrator, MigratorTrait};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
    TransactionTrait,
};

use entity::{attempts, jobs, labels};
pub use writer::Change;

/// Which queues a cleanup deletes from.
#[derive(Clone, Debug)]
pub enum Scope {
    All,
    Queue(String),
    /// Every queue but these (those with a retention of their own).
    Except(Vec<String>),
}

/// A job as retention sees it (`Store::kept_state`).
#[derive(Clone, Debug)]
pub struct Kept {
    pub id: String,
    pub succeeded: bool,
    pub finished_ms: Option<i64>,
    pub keep: bool,
    /// The last attempt: the accepted one when SUCCEEDED.
    pub attempt: u32,
    /// The accepted attempt's artifacts (JSON), if any.
    pub artifacts: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

/// How the store connects and writes behind.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections in the pool.
    pub pool: u32,
    /// How long changes gather before the writer writes them in one transaction.
    pub flush_every: Duration,
    /// How long a caller waits for the database: a connection, an insert, a ping.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pool: 16,
            flush_every: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The filters of a history page; `tenant` always applies.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub tenant: String,
    pub queue: Option<String>,
    pub state: Option<&'static str>,
    pub tier: Option<i32>,
    /// Created at or after (unix ms).
    pub created_from: Option<i64>,
    /// Created before (unix ms).
    pub created_before: Option<i64>,
    /// Every one of these labels must match.
    pub labels: Vec<(String, String)>,
}

/// Where a newest-first page continues: after the job created at `created_ms` with `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_ms: i64,
    pub id: String,
}

/// The database and this replica's writer; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    commits: commit::Handle,
    writer: writer::Handle,
    /// How long a caller waits for the database (`Options::timeout`).
    timeout: Duration,
}

/// Why `Store::insert` returned without its rows committed.
pub enum Inserting {
    Failed(Error),
    /// No answer within the timeout; the commit goes on, and this says how it ends.
    Slow(commit::Committed),
}

/// The SQL condition of a row whose job has not finished: its state is not terminal. The
/// migrations index the rows it holds for (`jobs_unfinished`), with this same text.
pub const UNFINISHED: &str = conveyor_migrations::UNFINISHED;

/// An advisory lock number: replicas starting together take turns migrating (PostgreSQL).
const MIGRATION_LOCK: i64 = 0x636f_6e76_6579; // "convey"

/// Connects to `url` (`postgres://...` or `sqlite://path?mode=rwc`); see `migrate`.
pub async fn connect(url: &str) -> Result<DatabaseConnection, Error> {
    connect_with(url, &Options::default()).await
}

async fn connect_with(url: &str, options: &Options) -> Result<DatabaseConnection, Error> {
    let mut opts = ConnectOptions::new(url);
    opts.max_connections(options.pool)
        .connect_timeout(options.timeout)
        .acquire_timeout(options.timeout)
        // A ping on every acquire is a round trip per statement; a connection that was used
        // within the second is known to be alive. One the server dropped meanwhile fails its
        // statement, and the pool replaces it.
        .test_before_acquire_if_idle_for(Duration::from_secs(1))
        .sqlx_logging(false);
    // SQLite: one writer at a time; WAL lets reads go on meanwhile, and a writer waits its turn
    // instead of failing with SQLITE_BUSY.
    opts.map_sqlx_sqlite_opts(|o| {
        o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
    });
    retry_locked(|| async { Ok(Database::connect(opts.clone()).await?) }).await
}

/// Runs the pending migrations, one replica at a time: replicas that start together wait for
/// the first, then find nothing left to do.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), Error> {
    retry_locked(|| migrate_once(db)).await
}

/// SQLite answers "database is locked" at once, without waiting, when replicas starting together
/// race to put a new file in WAL mode, or when a transaction that read before another's commit
/// tries to write after it. Starting over (a few times, with jitter) is the cure.
async fn retry_locked<T, Fut>(mut attempt: impl FnMut() -> Fut) -> Result<T, Error>
where
    Fut: Future<Output = Result<T, Error>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(Error::Db(e)) if e.to_string().contains("database is locked") && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 + rand::random_range(0..30))).await;
            }
            result => return result,
        }
    }
}

async fn migrate_once(db: &DatabaseConnection) -> Result<(), Error> {
    let backend = db.get_database_backend();
    let lock = match backend {
        DbBackend::Postgres => format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"),
        // A first write takes SQLite's write lock for the transaction; others wait for it.
        _ => {
            let table = "CREATE TABLE IF NOT EXISTS conveyor_migration_lock (id INTEGER)";
            db.execute_raw(Statement::from_string(backend, table))
                .await?;
            "DELETE FROM conveyor_migration_lock".to_string()
        }
    };
    let txn = db.begin().await?;
    txn.execute_raw(Statement::from_string(backend, lock))
        .await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await?;
    Ok(())
}

impl Store {
    /// Connects, migrates, and starts this replica's writer.
    pub async fn open(url: &str, options: Options) -> Result<Store, Error> {
        let db = connect_with(url, &options).await?;
        migrate(&db).await?;
        let writer = writer::spawn(db.clone(), options.flush_every);
        // SQLite has one writer: parallel commits would only wait for each other.
        let in_flight = match db.get_database_backend() {
            DbBackend::Sqlite => 1,
            _ => (options.pool as usize / 4).max(1),
        };
        let commits = commit::Handle::new(db.clone(), in_flight);
        Ok(Store {
            db,
            commits,
            writer,
            timeout: options.timeout,
        })
    }

    /// The connection pool, for the other tables of the schema (credentials).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Whether the database answers (the readiness check).
    /// Whether the database answers within the timeout (a database that hangs answers nothing).
    pub async fn ping(&self) -> Result<(), Error> {
        let ping = tokio::time::timeout(self.timeout, self.db.ping());
        match crate::metrics::timed(&crate::metrics::get().db_calls, "ping", ping).await {
            Ok(answered) => Ok(answered?),
            Err(_) => Err(Error::Db(DbErr::Custom(format!(
                "no answer within {:?}",
                self.timeout
            )))),
        }
    }

    /// How long a caller waits for the database.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Commits new jobs (and their labels), in one transaction with whatever other submits
    /// arrive meanwhile (`commit.rs`). `Err(Slow(...))` when the database has not answered
    /// within the timeout: the commit goes on, and the handed-back answer says how it ended.
    pub async fn insert(&self, rows: Vec<jobs::Model>) -> Result<(), Inserting> {
        let start = std::time::Instant::now();
        let mut committed = self.commits.insert(rows);
        let answer = tokio::time::timeout(self.timeout, &mut committed).await;
        let db_calls = &crate::metrics::get().db_calls;
        crate::metrics::observe(db_calls, "insert", start.elapsed());
        match answer {
            Ok(result) => result.map_err(|e| Inserting::Failed(e.into())),
            Err(_) => Err(Inserting::Slow(committed)),
        }
    }

    /// Deletes jobs that `insert` wrote but Redis did not take (an idempotent repeat, or Redis
    /// failing): they were never accepted.
    pub async fn forget(&self, ids: Vec<String>) -> Result<(), Error> {
        if !ids.is_empty() {
            self.delete(ids).await?;
        }
        Ok(())
    }

    async fn delete(&self, ids: Vec<String>) -> Result<(), Error> {
        let txn = self.db.begin().await?;
        labels::Entity::delete_many()
            .filter(labels::Column::JobId.is_in(ids.clone()))
            .exec(&txn)
            .await?;
        attempts::Entity::delete_many()
            .filter(attempts::Column::JobId.is_in(ids.clone()))
            .exec(&txn)
            .await?;
        jobs::Entity::delete_many()
            .filter(jobs::Column::Id.is_in(ids))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Queues transitions for the writer; never waits.
    pub fn record(&self, changes: Vec<Change>) {
        self.writer.record(changes);
    }

    /// Waits until everything recorded before the call is written.
    pub async fn flush(&self) {
        self.writer.flush().await;
    }

    pub async fn get(&self, id: &str) -> Result<Option<jobs::Model>, Error> {
        Ok(jobs::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await?)
    }

    /// A FAILED job's row back to QUEUED (RetryJob), written at once rather than behind: its
    /// `updated_ms` of `at` makes any older write still on its way (the FAILED itself, from some
    /// replica's writer) lose to it.
    pub async fn reopen(&self, id: &str, max_attempts: u32, at: i64) -> Result<(), Error> {
        use sea_orm::sea_query::Expr;
        jobs::Entity::update_many()
            .col_expr(jobs::Column::State, Expr::value("QUEUED"))
            .col_expr(jobs::Column::MaxAttempts, Expr::value(max_attempts as i32))
            .col_expr(jobs::Column::FinishedMs, Expr::value(Option::<i64>::None))
            .col_expr(jobs::Column::Result, Expr::value(""))
            .col_expr(jobs::Column::UpdatedMs, Expr::value(at))
            .filter(jobs::Column::Id.eq(id))
            .filter(jobs::Column::UpdatedMs.lte(at))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The attempts of a job, first first.
    pub async fn attempts(&self, id: &str) -> Result<Vec<attempts::Model>, Error> {
        Ok(attempts::Entity::find()
            .filter(attempts::Column::JobId.eq(id))
            .order_by_asc(attempts::Column::Attempt)
            .all(&self.db)
            .await?)
    }

    /// Up to `limit` jobs matching `filter`, newest first, after `cursor`.
    pub async fn list(
        &self,
        filter: &Filter,
        limit: u64,
        cursor: Option<&Cursor>,
    ) -> Result<Vec<jobs::Model>, Error> {
        use jobs::Column as C;
        let mut query = jobs::Entity::find().filter(C::Tenant.eq(filter.tenant.as_str()));
        if let Some(queue) = &filter.queue {
            query = query.filter(C::Queue.eq(queue.as_str()));
        }
        if let Some(state) = filter.state {
            query = query.filter(C::State.eq(state));
        }
        if let Some(tier) = filter.tier {
            query = query.filter(C::Tier.eq(tier));
        }
        if let Some(from) = filter.created_from {
            query = query.filter(C::CreatedMs.gte(from));
        }
        if let Some(before) = filter.created_before {
            query = query.filter(C::CreatedMs.lt(before));
        }
        for (key, value) in &filter.labels {
            let labelled = Query::select()
                .column(labels::Column::JobId)
                .from(labels::Entity)
                .and_where(labels::Column::Key.eq(key.as_str()))
                .and_where(labels::Column::Value.eq(value.as_str()))
                .to_owned();
            query = query.filter(C::Id.in_subquery(labelled));
        }
        if let Some(c) = cursor {
            query = query.filter(
                Condition::any().add(C::CreatedMs.lt(c.created_ms)).add(
                    Condition::all()
                        .add(C::CreatedMs.eq(c.created_ms))
                        .add(C::Id.lt(c.id.as_str())),
                ),
            );
        }
        Ok(query
            .order_by_desc(C::CreatedMs)
            .order_by_desc(C::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Unfinished jobs (QUEUED, SCHEDULED, RUNNING) in id order after `after`: what the
    /// reconciler puts back into Redis.
    pub async fn unfinished(
        &self,
        queue: Option<&str>,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<jobs::Model>, Error> {
        let query = jobs::Entity::find().filter(Expr::cust(UNFINISHED));
        self.page_by_id(in_queue(query, queue), after, limit).await
    }

    /// The queues that have unfinished jobs: those a Redis shard that lost its data may have
    /// lost jobs of.
    pub async fn queues_in_play(&self) -> Result<Vec<String>, Error> {
        Ok(jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Queue)
            .distinct()
            .filter(Expr::cust(UNFINISHED))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Whether `queue` has unfinished jobs other than `except`.
    pub async fn in_play(&self, queue: &str, except: &[String]) -> Result<bool, Error> {
        let found: Option<String> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .filter(Expr::cust(UNFINISHED))
            .filter(jobs::Column::Queue.eq(queue))
            .filter(jobs::Column::Id.is_not_in(except.iter().cloned()))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(found.is_some())
    }

    /// Unfinished jobs whose row has not changed since `before` (unix ms), in id order after
    /// `after`: what the repair compares with Redis.
    pub async fn stale(
        &self,
        before: i64,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<jobs::Model>, Error> {
        // By state, not `finished_ms`: a row left finished under a waiting state is looked at too.
        // The predicate is written out so the partial index `jobs_unfinished` serves it.
        let query = jobs::Entity::find()
            .filter(Expr::cust(UNFINISHED))
            .filter(jobs::Column::UpdatedMs.lt(before));
        self.page_by_id(query, after, limit).await
    }

    /// Jobs with an idempotency key that finished at or after `since` (unix ms), in id order
    /// after `after`: their keys still hold in Redis, so the reconciler restores them too.
    pub async fn finished_with_keys(
        &self,
        queue: Option<&str>,
        since: i64,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<jobs::Model>, Error> {
        let query = jobs::Entity::find()
            .filter(jobs::Column::FinishedMs.gte(since))
            .filter(jobs::Column::IdempotencyKey.ne(""));
        self.page_by_id(in_queue(query, queue), after, limit).await
    }

    /// Up to `limit` rows of `query` in id order after `after`: the paging of every scan that
    /// walks all jobs of a kind.
    async fn page_by_id(
        &self,
        query: sea_orm::Select<jobs::Entity>,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<jobs::Model>, Error> {
        let query = match after {
            Some(after) => query.filter(jobs::Column::Id.gt(after)),
            None => query,
        };
        Ok(query
            .order_by_asc(jobs::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Deletes jobs of `scope` that finished before `cutoff` (unix ms) and are not kept,
    /// `batch` at a time so no transaction grows large or holds locks long (a cleanup that
    /// stops halfway leaves the rest for the next). Returns how many were deleted.
    pub async fn cleanup(&self, cutoff: i64, batch: u64, scope: &Scope) -> Result<u64, Error> {
        let mut deleted = 0;
        loop {
            let mut query = jobs::Entity::find()
                .select_only()
                .column(jobs::Column::Id)
                .filter(jobs::Column::FinishedMs.lt(cutoff))
                .filter(jobs::Column::Keep.eq(false));
            query = match scope {
                Scope::All => query,
                Scope::Queue(queue) => query.filter(jobs::Column::Queue.eq(queue.as_str())),
                Scope::Except(queues) => {
                    query.filter(jobs::Column::Queue.is_not_in(queues.iter().map(String::as_str)))
                }
            };
            let ids: Vec<String> = query.limit(batch).into_tuple().all(&self.db).await?;
            if ids.is_empty() {
                return Ok(deleted);
            }
            deleted += ids.len() as u64;
            self.delete(ids).await?;
        }
    }

    /// What retention needs to know of jobs `ids`: those the database has.
    pub async fn kept_state(&self, ids: Vec<String>) -> Result<Vec<Kept>, Error> {
        type Row = (String, String, Option<i64>, bool, i32, Option<String>);
        let rows: Vec<Row> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .column(jobs::Column::State)
            .column(jobs::Column::FinishedMs)
            .column(jobs::Column::Keep)
            .column(jobs::Column::Attempt)
            .column(jobs::Column::Artifacts)
            .filter(jobs::Column::Id.is_in(ids))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, state, finished_ms, keep, attempt, artifacts)| Kept {
                id,
                succeeded: state == "SUCCEEDED",
                finished_ms,
                keep,
                attempt: attempt as u32,
                artifacts,
            })
            .collect())
    }
}

/// `query` narrowed to `queue`'s jobs, when one is given.
fn in_queue(
    query: sea_orm::Select<jobs::Entity>,
    queue: Option<&str>,
) -> sea_orm::Select<jobs::Entity> {
    match queue {
        Some(queue) => query.filter(jobs::Column::Queue.eq(queue)),
        None => query,
    }
}
