//! A tenant's figures from the history: jobs counted by queue, tier and state, the oldest
//! waiting job, and how many finished lately. They lag the live state by up to one flush of the
//! writer.

use sea_orm::sea_query::{Expr, Func, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect};

use super::entity::jobs::{self, Column as C};
use super::{Error, Store};

/// One group of a tenant's jobs: (queue, tier, state, how many).
pub type Count = (String, i32, String, i64);

impl Store {
    /// The tenant's jobs counted by queue, tier and state; only `queue`'s when it is given.
    pub async fn counts(&self, tenant: &str, queue: Option<&str>) -> Result<Vec<Count>, Error> {
        let mut query = jobs::Entity::find()
            .select_only()
            .column(C::Queue)
            .column(C::Tier)
            .column(C::State)
            .column_as(SimpleExpr::from(Func::count(Expr::col(C::Id))), "n")
            .filter(C::Tenant.eq(tenant));
        if let Some(queue) = queue {
            query = query.filter(C::Queue.eq(queue));
        }
        Ok(query
            .group_by(C::Queue)
            .group_by(C::Tier)
            .group_by(C::State)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// When the oldest of the tenant's QUEUED jobs in `queue` was submitted (unix ms).
    pub async fn oldest_queued(&self, tenant: &str, queue: &str) -> Result<Option<i64>, Error> {
        let oldest: Option<Option<i64>> = jobs::Entity::find()
            .select_only()
            .column_as(
                SimpleExpr::from(Func::min(Expr::col(C::CreatedMs))),
                "oldest",
            )
            .filter(C::Tenant.eq(tenant))
            .filter(C::Queue.eq(queue))
            .filter(C::State.eq("QUEUED"))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(oldest.flatten())
    }

    /// How many of the tenant's jobs in `queue` finished at or after `since` (unix ms).
    pub async fn finished_since(
        &self,
        tenant: &str,
        queue: &str,
        since: i64,
    ) -> Result<u64, Error> {
        Ok(jobs::Entity::find()
            .filter(C::Tenant.eq(tenant))
            .filter(C::Queue.eq(queue))
            .filter(C::FinishedMs.gte(since))
            .count(&self.db)
            .await?)
    }
}
