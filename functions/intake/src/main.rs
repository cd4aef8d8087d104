//! The intake Lambda function: builds its clients once, then hands every SQS batch to the shared
//! stage code (`shared::entry::Intake`), answering with a partial batch response.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::logging::init();
    let sdk = shared::aws::sdk_config().await;
    let stage = shared::entry::Intake::from_env(&shared::config::ProcessEnv, &sdk).await?;
    let stage = &stage;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(stage.handle(event.payload).await)
    }))
    .await
}
