//! The poll Lambda function: everything it does is `shared::entry::Poll`, run as a
//! [`shared::entry::Function`] (clients built once, every SQS batch answered with a partial batch
//! response).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::entry::run::<shared::entry::Poll>().await
}
