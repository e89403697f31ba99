//! Plans cached by normalized statement text: statements that differ only in their
//! literal values are parsed once. A plan depends on the shard map (which tables are
//! sharded), so each entry remembers the tables it was made for (`ShardMap::tables_id`;
//! a vshard move changes the map but not the plans).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lexer::{self, LexError, Literal};
use super::plan::{self, Plan};
use crate::limits;
use crate::router::ShardMap;

/// One statement, ready for a routing decision.
#[derive(Debug, Clone)]
pub struct Analyzed {
    pub plan: Arc<Plan>,
    pub literals: Vec<Literal>,
    /// From a leading `/* pgshard: key=VALUE */` comment.
    pub key_hint: Option<String>,
}

#[derive(Default)]
pub struct PlanCache {
    plans: Mutex<HashMap<String, (u64, Arc<Plan>)>>,
}

impl PlanCache {
    /// Lexes `sql` and finds its plan, parsing it only when no statement of the same
    /// shape was planned for the same tables.
    pub fn analyze(&self, sql: &str, map: &ShardMap) -> Result<Analyzed, LexError> {
        let normalized = lexer::normalize(sql)?;
        let cached = self.plans.lock().ok().and_then(|plans| {
            plans
                .get(&normalized.text)
                .filter(|(tables, _)| *tables == map.tables_id)
                .map(|(_, plan)| plan.clone())
        });
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let (plan, cacheable) = plan::plan(&normalized.text, sql, map);
                let plan = Arc::new(plan);
                let plans = self.plans.lock().ok().filter(|_| cacheable);
                if let Some(mut plans) = plans {
                    if plans.len() >= limits::PLAN_CACHE_MAX {
                        // Rare and cheap to rebuild: start over rather than track age.
                        plans.clear();
                    }
                    plans.insert(normalized.text, (map.tables_id, plan.clone()));
                }
                plan
            }
        };
        Ok(Analyzed {
            plan,
            literals: normalized.literals,
            key_hint: normalized.key_hint,
        })
    }

    pub fn len(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
