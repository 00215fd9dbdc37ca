//! `PUT /_matrix/federation/v1/send/{txnId}`: the transactions other servers push (the
//! federation receiver in the service layer does the work).

use axum::Router;
use ruma::{OwnedEventId, api::federation::transactions::send_transaction_message};

use myelin_service::federation_receiver::InboundTransaction;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(send_transaction)
}

async fn send_transaction(
    state: AppState,
    request: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response, MatrixError> {
    let body = request.body;
    let answer = state
        .services
        .receive_transaction(InboundTransaction {
            // The origin the X-Matrix signature proved; the body's `origin` claims nothing more.
            origin: request.identity.0,
            txn_id: body.transaction_id.to_string(),
            pdus: body.pdus,
            edus: body.edus.into_iter().map(|edu| edu.into_json()).collect(),
        })
        .await?;
    Ok(send_transaction_message::v1::Response::new(
        answer
            .into_iter()
            .filter_map(|(id, result)| {
                Some((OwnedEventId::try_from(id).ok()?, result.map_or(Ok(()), Err)))
            })
            .collect(),
    ))
}
