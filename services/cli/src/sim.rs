//! `finestra sim …`: plays the simulator's users (its control API).

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum SimCommand {
    /// A user writes to a number (the simulator posts the signed webhook to ingest).
    UserSays {
        #[arg(long)]
        phone_number_id: String,
        /// The user's wa_id.
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        text: String,
        /// The message was sent this many seconds ago.
        #[arg(long, default_value_t = 0)]
        seconds_ago: i64,
        /// The user came from this ad (starts a free entry point if the business replies).
        #[arg(long)]
        referral_source_id: Option<String>,
        /// Send media instead (image, document, audio, video, sticker; the text is its caption).
        #[arg(long)]
        media: Option<String>,
    },
    /// A user blocks a number.
    Block {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
    /// A user stops marketing messages from a number (a `user_preferences` webhook).
    StopMarketing {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
    /// A user resumes marketing messages from a number.
    ResumeMarketing {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
    /// A user unblocks a number.
    Unblock {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
}

async fn post(base: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let url = format!("{}/sim/v1/{path}", base.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(
        status.is_success(),
        "the simulator answered {status}: {answer}"
    );
    Ok(answer)
}

pub async fn run(base: &str, command: SimCommand) -> anyhow::Result<()> {
    match command {
        SimCommand::UserSays {
            phone_number_id,
            from,
            name,
            text,
            seconds_ago,
            referral_source_id,
            media,
        } => {
            let answer = post(
                base,
                "say",
                json!({"phone_number_id": phone_number_id, "from": from, "name": name,
                       "text": text, "seconds_ago": seconds_ago,
                       "referral_source_id": referral_source_id, "media": media}),
            )
            .await?;
            println!(
                "{from} wrote to {phone_number_id}: {} ({}s ago)",
                answer["wamid"].as_str().unwrap_or_default(),
                seconds_ago
            );
        }
        SimCommand::Block {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "block",
                json!({"phone_number_id": phone_number_id, "user": user, "blocked": true}),
            )
            .await?;
            println!("{user} blocked {phone_number_id}");
        }
        SimCommand::StopMarketing {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "preference",
                json!({"phone_number_id": phone_number_id, "user": user, "stop": true}),
            )
            .await?;
            println!("{user} stopped marketing messages from {phone_number_id}");
        }
        SimCommand::ResumeMarketing {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "preference",
                json!({"phone_number_id": phone_number_id, "user": user, "stop": false}),
            )
            .await?;
            println!("{user} resumed marketing messages from {phone_number_id}");
        }
        SimCommand::Unblock {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "block",
                json!({"phone_number_id": phone_number_id, "user": user, "blocked": false}),
            )
            .await?;
            println!("{user} unblocked {phone_number_id}");
        }
    }
    Ok(())
}
