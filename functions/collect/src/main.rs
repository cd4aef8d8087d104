//! The collect function (wiring only; the stage logic arrives with the pipeline issue).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init();
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        tracing::info!(
            records = event.payload.records.len(),
            "collect received a batch"
        );
        Ok::<_, Error>(SqsBatchResponse::default())
    }))
    .await
}
