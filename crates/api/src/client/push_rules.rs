//! `/pushrules/`: the user's push rules (the spec's defaults plus the user's changes), and
//! reading, adding, deleting, enabling and re-acting single rules in the `global` scope.

use axum::Router;
use ruma::api::client::push::{
    delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
    get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(all)
        .ruma(global)
        .ruma(get)
        .ruma(set)
        .ruma(delete)
        .ruma(enabled)
        .ruma(set_enabled)
        .ruma(actions)
        .ruma(set_actions)
}

async fn all(
    state: AppState,
    request: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response, MatrixError> {
    let rules = state
        .services
        .user_data
        .push_rules(&request.identity.user_id)
        .await?;
    Ok(get_pushrules_all::v3::Response::new(rules))
}

async fn global(
    state: AppState,
    request: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response, MatrixError> {
    let rules = state
        .services
        .user_data
        .push_rules(&request.identity.user_id)
        .await?;
    Ok(get_pushrules_global_scope::v3::Response::new(rules))
}

async fn get(
    state: AppState,
    request: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response, MatrixError> {
    let body = request.body;
    let rule = state
        .services
        .user_data
        .push_rule(&request.identity.user_id, body.kind, &body.rule_id)
        .await?;
    Ok(get_pushrule::v3::Response::new(rule))
}

async fn set(
    state: AppState,
    request: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .set_push_rule(
            &request.identity.user_id,
            body.rule,
            body.before.as_deref(),
            body.after.as_deref(),
        )
        .await?;
    Ok(set_pushrule::v3::Response::new())
}

async fn delete(
    state: AppState,
    request: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .delete_push_rule(&request.identity.user_id, body.kind, &body.rule_id)
        .await?;
    Ok(delete_pushrule::v3::Response::new())
}

async fn enabled(
    state: AppState,
    request: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response, MatrixError> {
    let body = request.body;
    let rule = state
        .services
        .user_data
        .push_rule(&request.identity.user_id, body.kind, &body.rule_id)
        .await?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled))
}

async fn set_enabled(
    state: AppState,
    request: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .set_push_rule_enabled(
            &request.identity.user_id,
            body.kind,
            &body.rule_id,
            body.enabled,
        )
        .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

async fn actions(
    state: AppState,
    request: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response, MatrixError> {
    let body = request.body;
    let rule = state
        .services
        .user_data
        .push_rule(&request.identity.user_id, body.kind, &body.rule_id)
        .await?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions))
}

async fn set_actions(
    state: AppState,
    request: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .user_data
        .set_push_rule_actions(
            &request.identity.user_id,
            body.kind,
            &body.rule_id,
            body.actions,
        )
        .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}
