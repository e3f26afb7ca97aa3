//! Group commit of new jobs: submits that arrive together share one transaction, so a commit (an
//! fsync) is paid per group rather than per job, and concurrent single submits do not queue up
//! behind each other's commits. Rows that find one of the `in_flight` places free and nothing
//! waiting go at once; else they join the group that waits for a place (or open one, whose
//! leader task waits), so a group forms while the earlier ones are being committed.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use sea_orm::sqlx::{self, PgPool};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, EntityTrait, TransactionTrait};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::entity::{jobs, labels};

/// The most jobs one group takes.
const MAX_ROWS: usize = 5000;

type Answer = oneshot::Sender<Result<(), String>>;

struct Group {
    rows: Vec<jobs::Model>,
    answers: Vec<Answer>,
}

#[derive(Clone)]
pub struct Handle {
    db: DatabaseConnection,
    places: Arc<Semaphore>,
    /// Groups waiting for a place, oldest first; each has a leader task.
    waiting: Arc<Mutex<VecDeque<Group>>>,
}

impl Handle {
    /// `in_flight` groups may commit at once (1 for SQLite, which has one writer anyway).
    pub fn new(db: DatabaseConnection, in_flight: usize) -> Handle {
        Handle {
            db,
            places: Arc::new(Semaphore::new(in_flight)),
            waiting: Arc::default(),
        }
    }

    /// Hands the rows to be committed: at once, or in the next group. The answer says when (and
    /// whether) they were committed; a caller may stop waiting for it and pick it up later.
    pub fn insert(&self, rows: Vec<jobs::Model>) -> Committed {
        let (answer, answered) = oneshot::channel();
        // The lock guards plain bookkeeping; a panic elsewhere leaves it consistent.
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.back_mut() {
            Some(group) if group.rows.len() + rows.len() <= MAX_ROWS => {
                group.rows.extend(rows);
                group.answers.push(answer);
            }
            last => {
                let free = match last {
                    None => self.places.clone().try_acquire_owned().ok(),
                    Some(_) => None,
                };
                let group = Group {
                    rows,
                    answers: vec![answer],
                };
                match free {
                    Some(place) => {
                        tokio::spawn(commit(self.db.clone(), group, place));
                    }
                    None => {
                        waiting.push_back(group);
                        tokio::spawn(self.clone().lead());
                    }
                }
            }
        }
        Committed(answered)
    }

    /// Waits for a place, then commits the oldest waiting group.
    async fn lead(self) {
        let Ok(place) = self.places.clone().acquire_owned().await else {
            return;
        };
        let group = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if let Some(group) = group {
            commit(self.db, group, place).await;
        }
    }
}

async fn commit(db: DatabaseConnection, group: Group, place: OwnedSemaphorePermit) {
    let result = insert(&db, group.rows).await.map_err(|e| e.to_string());
    drop(place);
    for answer in group.answers {
        let _ = answer.send(result.clone());
    }
}

/// Whether a group with the rows was committed.
pub struct Committed(oneshot::Receiver<Result<(), String>>);

impl Future for Committed {
    type Output = Result<(), DbErr>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|answer| match answer {
            Ok(result) => result.map_err(DbErr::Custom),
            Err(_) => Err(DbErr::Custom("the history committer stopped".into())),
        })
    }
}

/// Inserts jobs and their labels in one transaction.
async fn insert(db: &DatabaseConnection, rows: Vec<jobs::Model>) -> Result<(), DbErr> {
    let labels: Vec<labels::Model> = rows
        .iter()
        .flat_map(|row| {
            let map: BTreeMap<String, String> =
                serde_json::from_str(&row.labels).unwrap_or_default();
            map.into_iter().map(|(key, value)| labels::Model {
                job_id: row.id.clone(),
                key,
                value,
            })
        })
        .collect();
    if db.get_database_backend() == DbBackend::Postgres {
        return insert_postgres(db.get_postgres_connection_pool(), &rows, &labels).await;
    }
    let rows: Vec<jobs::ActiveModel> = rows.into_iter().map(Into::into).collect();
    // One statement is a transaction of its own: one round trip instead of three.
    if labels.is_empty() && rows.len() <= 500 {
        return jobs::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await
            .map(drop);
    }
    let txn = db.begin().await?;
    // Well under both backends' limits on bound parameters per statement.
    for chunk in rows.chunks(500) {
        jobs::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await?;
    }
    let labels: Vec<labels::ActiveModel> = labels.into_iter().map(Into::into).collect();
    for chunk in labels.chunks(2000) {
        labels::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await
}

/// On PostgreSQL the rows go as one array per column through `unnest`: one statement, prepared
/// once, whatever the number of rows; binding 35 values a row made the statement's text, its
/// parse and its parameters grow with the group. Labels, when there are any, go in the same
/// transaction the same way.
async fn insert_postgres(
    pool: &PgPool,
    rows: &[jobs::Model],
    labels: &[labels::Model],
) -> Result<(), DbErr> {
    let err = |e: sqlx::Error| DbErr::Custom(e.to_string());
    let col = |f: fn(&jobs::Model) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let int = |f: fn(&jobs::Model) -> i32| rows.iter().map(f).collect::<Vec<i32>>();
    let ms = |f: fn(&jobs::Model) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let ms_null = |f: fn(&jobs::Model) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
    // Every column of `jobs`, in the order of the binds below.
    let insert = sqlx::query(
        "INSERT INTO jobs (id, queue, tenant, tier, priority, state, payload, content_type, \
         labels, attempt, max_attempts, backoff_initial_ms, backoff_max_ms, timeout_ms, \
         idempotency_key, created_ms, run_at_ms, started_ms, finished_ms, progress_percent, \
         progress_stage, progress_message, result, error, worker, updated_ms, callback_url, \
         limit_key, on_success, parent_id, depends_on, dependency_failure, artifacts, keep, \
         inputs) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], \
         $6::text[], $7::bytea[], $8::text[], $9::text[], $10::int4[], $11::int4[], \
         $12::int8[], $13::int8[], $14::int8[], $15::text[], $16::int8[], $17::int8[], \
         $18::int8[], $19::int8[], $20::float8[], $21::text[], $22::text[], $23::text[], \
         $24::text[], $25::text[], $26::int8[], $27::text[], $28::text[], $29::bytea[], \
         $30::text[], $31::text[], $32::text[], $33::text[], $34::bool[], $35::text[])",
    )
    .bind(col(|r| &r.id))
    .bind(col(|r| &r.queue))
    .bind(col(|r| &r.tenant))
    .bind(int(|r| r.tier))
    .bind(int(|r| r.priority))
    .bind(col(|r| &r.state))
    .bind(
        rows.iter()
            .map(|r| r.payload.as_slice())
            .collect::<Vec<&[u8]>>(),
    )
    .bind(col(|r| &r.content_type))
    .bind(col(|r| &r.labels))
    .bind(int(|r| r.attempt))
    .bind(int(|r| r.max_attempts))
    .bind(ms(|r| r.backoff_initial_ms))
    .bind(ms(|r| r.backoff_max_ms))
    .bind(ms(|r| r.timeout_ms))
    .bind(col(|r| &r.idempotency_key))
    .bind(ms(|r| r.created_ms))
    .bind(ms(|r| r.run_at_ms))
    .bind(ms_null(|r| r.started_ms))
    .bind(ms_null(|r| r.finished_ms))
    .bind(
        rows.iter()
            .map(|r| r.progress_percent)
            .collect::<Vec<f64>>(),
    )
    .bind(col(|r| &r.progress_stage))
    .bind(col(|r| &r.progress_message))
    .bind(col(|r| &r.result))
    .bind(col(|r| &r.error))
    .bind(col(|r| &r.worker))
    .bind(ms(|r| r.updated_ms))
    .bind(col(|r| &r.callback_url))
    .bind(col(|r| &r.limit_key))
    .bind(
        rows.iter()
            .map(|r| r.on_success.as_deref())
            .collect::<Vec<Option<&[u8]>>>(),
    )
    .bind(col(|r| &r.parent_id))
    .bind(col(|r| &r.depends_on))
    .bind(col(|r| &r.dependency_failure))
    .bind(
        rows.iter()
            .map(|r| r.artifacts.as_deref())
            .collect::<Vec<Option<&str>>>(),
    )
    .bind(rows.iter().map(|r| r.keep).collect::<Vec<bool>>())
    .bind(col(|r| &r.inputs));
    if labels.is_empty() {
        // One statement is a transaction of its own: one round trip instead of three.
        return insert.execute(pool).await.map(drop).map_err(err);
    }
    let mut txn = pool.begin().await.map_err(err)?;
    insert.execute(&mut *txn).await.map_err(err)?;
    sqlx::query(
        "INSERT INTO job_labels (job_id, key, value) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
    )
    .bind(labels.iter().map(|l| l.job_id.as_str()).collect::<Vec<_>>())
    .bind(labels.iter().map(|l| l.key.as_str()).collect::<Vec<_>>())
    .bind(labels.iter().map(|l| l.value.as_str()).collect::<Vec<_>>())
    .execute(&mut *txn)
    .await
    .map_err(err)?;
    txn.commit().await.map_err(err)
}
