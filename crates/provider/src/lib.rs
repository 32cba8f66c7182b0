//! The messaging network behind Finestra (docs/rules.md §9), reached only through its Cloud API:
//! a `Provider` sends messages and manages a business account's templates, and says of each
//! failure whether a retry can help. The one implementation, [`CloudApi`], is plain HTTP to a
//! configurable base address: the simulator by default, Meta's Graph API in production.

mod cloud_api;
mod error;

pub use cloud_api::CloudApi;
pub use error::{KNOWN_CODES, KnownCode, ProviderError};
pub use finestra_cloudapi::send::MediaInfo;
pub use finestra_cloudapi::templates::{Content, Created, Listed};

use futures::future::BoxFuture;

/// What a deletion found at the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// The network had no such template (deleted earlier, or never submitted).
    Absent,
}

/// A template as it is submitted for review.
#[derive(Clone, Debug)]
pub struct Submission<'a> {
    pub name: &'a str,
    pub language: &'a str,
    pub category: &'a str,
    pub content: &'a Content,
}

pub trait Provider: Send + Sync + 'static {
    /// Sends a Cloud API body from `phone_number_id`; the network's message id on success.
    fn send<'a>(
        &'a self,
        phone_number_id: &'a str,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<String, ProviderError>>;

    /// Submits a template of business account `waba_id` for review.
    fn submit_template<'a>(
        &'a self,
        waba_id: &'a str,
        submission: Submission<'a>,
    ) -> BoxFuture<'a, Result<Created, ProviderError>>;

    /// Replaces a submitted template's content (and category): the network reviews it again.
    fn edit_template<'a>(
        &'a self,
        provider_template_id: &'a str,
        category: Option<&'a str>,
        content: &'a Content,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;

    /// Deletes a template by name (every language), or only the language `provider_template_id`
    /// names when given.
    fn delete_template<'a>(
        &'a self,
        waba_id: &'a str,
        name: &'a str,
        provider_template_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Deleted, ProviderError>>;

    /// Every template the network holds for business account `waba_id`.
    fn list_templates<'a>(
        &'a self,
        waba_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Listed>, ProviderError>>;

    /// Marks a message the user sent to `phone_number_id` as read (blue ticks), and shows the
    /// user a typing indicator when `typing` (until the reply, or 25 s).
    fn mark_read<'a>(
        &'a self,
        phone_number_id: &'a str,
        message_id: &'a str,
        typing: bool,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;

    /// Uploads a file for `phone_number_id` to send by id; the network's media id.
    fn upload_media<'a>(
        &'a self,
        phone_number_id: &'a str,
        content_type: &'a str,
        filename: &'a str,
        data: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, ProviderError>>;

    /// Where a file a user sent to `phone_number_id` can be downloaded, with its type, hash
    /// and size.
    fn media_info<'a>(
        &'a self,
        media_id: &'a str,
        phone_number_id: &'a str,
    ) -> BoxFuture<'a, Result<MediaInfo, ProviderError>>;

    /// Downloads a file from the URL `media_info` gave (with the bearer token); a file longer
    /// than `max_bytes` is refused without being read to its end.
    fn download_media<'a>(
        &'a self,
        url: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Vec<u8>, ProviderError>>;

    /// Blocks (or unblocks) users at the network: they can no longer write to the number, nor
    /// receive from it. Answers the users the network applied it to.
    fn block_users<'a>(
        &'a self,
        phone_number_id: &'a str,
        users: &'a [String],
        block: bool,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>>;
}
