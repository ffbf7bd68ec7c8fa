//! Handlers, one per operation, named after it; and the one table that says which operations
//! this server implements. An operation missing from [`dispatch`] answers the spec's
//! `M_UNRECOGNIZED`. Each file is named after the generated module (the spec's API area) its
//! operations come from, or holds a few closely related ones: `rooms` (create_room, joining,
//! leaving, inviting, kicking, banning, knocking, list_joined_rooms), `events` (room_send,
//! room_state, redaction, message_pagination, event_context, the member lists), `user_data`
//! (account_data, filter, tags, typing, receipts, read_markers), `keys` (keys, cross_signing,
//! to_device), `bridges` (third_party_lookup and the application-service operations),
//! `legacy` (old_sync, peeking_events), `account` (registration, login, logout, passwords,
//! devices, whoami), `media` (content_repo, authed_content_repo).

mod account;
pub mod admin;
mod backup;
mod bridges;
mod credentials;
pub(crate) mod directory;
mod discovery;
mod events;
mod identity;
pub(crate) mod keys;
mod legacy;
pub(crate) mod media;
mod mutual_rooms;
mod notifications;
mod openid;
mod presence;
mod preview;
mod profile;
mod pusher;
mod pushrules;
mod relations;
mod report_content;
pub(crate) mod room_event_by_timestamp;
mod room_summary;
mod room_upgrades;
mod rooms;
mod search;
pub(crate) mod space_hierarchy;
pub mod sso;
mod sync;
pub mod threepid;
pub mod uia;
mod user_data;
mod users;

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use mxconform_generated::Route;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::Server;

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Authed {
    pub user_id: String,
    /// Empty for an application service (it has no device).
    pub device_id: String,
    pub token: String,
    /// The application service's id, when the token is its `as_token`.
    pub appservice: Option<String>,
    /// The account is locked / suspended by an administrator (read with the token).
    pub locked: bool,
    pub suspended: bool,
}

/// What a handler sees besides its decoded request.
pub struct Ctx<'a> {
    pub server: &'a Server,
    pub user: Option<Authed>,
    pub route: &'static Route,
    pub raw_body: Bytes,
    pub content_type: Option<String>,
    pub query: Vec<(String, String)>,
    pub path_params: BTreeMap<String, String>,
    /// A long-poll's deadline has passed: answer with what there is.
    pub last_chance: bool,
    /// When the request arrived (long-poll timeouts count from here).
    pub started: Instant,
}

impl Ctx<'_> {
    /// The caller, for operations whose route requires a token (checked before dispatch).
    pub fn me(&self) -> ApiResult<&Authed> {
        self.user
            .as_ref()
            .ok_or_else(|| ApiError::missing_token("this request needs an access token"))
    }
}

/// A handler's answer.
pub enum Reply {
    Json(u16, Value),
    Bytes {
        status: u16,
        content_type: String,
        bytes: Vec<u8>,
        disposition: Option<String>,
    },
    /// Nothing to say yet: call again at the next change, or once `until` has passed with
    /// [`Ctx::last_chance`] set.
    Wait {
        until: Instant,
    },
    /// `302 Found` to `location` (single sign-on redirects).
    Redirect {
        location: String,
    },
    /// The answer needs a request to another server (an application service, a web page):
    /// this future makes it, outside the state lock, and gives the real reply.
    Outbound(std::pin::Pin<Box<dyn std::future::Future<Output = ApiResult<Reply>> + Send>>),
}

impl Reply {
    /// An answer that waits on `f`.
    pub fn outbound<F>(f: F) -> Reply
    where
        F: std::future::Future<Output = ApiResult<Value>> + Send + 'static,
    {
        Reply::Outbound(Box::pin(async move { f.await.map(Reply::from) }))
    }
}

impl From<Value> for Reply {
    fn from(v: Value) -> Reply {
        Reply::Json(200, v)
    }
}

pub type Handler = fn(&Ctx, Value) -> ApiResult<Reply>;

/// Decodes the input into the operation's generated request type and calls the handler.
fn call<R: DeserializeOwned, O: Into<Reply>>(
    ctx: &Ctx,
    input: Value,
    f: fn(&Ctx, R) -> ApiResult<O>,
) -> ApiResult<Reply> {
    let req: R = serde_json::from_value(input)
        .map_err(|e| ApiError::bad_json(format!("the request does not fit the spec: {e}")))?;
    f(ctx, req).map(Into::into)
}

/// [`call`]'s decoding alone: the handler `_f` only names the request type.
fn decodes<R: DeserializeOwned, O>(
    input: &Value,
    _f: fn(&Ctx, R) -> ApiResult<O>,
) -> ApiResult<()> {
    R::deserialize(input)
        .map(drop)
        .map_err(|e| ApiError::bad_json(format!("the request does not fit the spec: {e}")))
}

macro_rules! table {
    ($($op:literal => $f:path,)*) => {
        /// The operations this server implements, by operation id.
        pub fn dispatch(operation_id: &str) -> Option<Handler> {
            match operation_id {
                $( $op => Some(|ctx, input| call(ctx, input, $f)), )*
                _ => None,
            }
        }

        /// Operation ids of [`dispatch`], for `mxconform routes --implemented`.
        pub const IMPLEMENTED: &[&str] = &[$($op),*];

        /// Whether the input decodes into the operation's request type, as it does before its
        /// handler runs (the no-op mutant, [`crate::mutant`], checks this much).
        pub fn check_request(operation_id: &str, input: &Value) -> ApiResult<()> {
            match operation_id {
                $( $op => decodes(input, $f), )*
                _ => Ok(()),
            }
        }
    };
}

table! {
    "getVersions" => discovery::get_versions,
    "getWellknown" => discovery::get_wellknown,
    "getWellknownSupport" => discovery::get_wellknown_support,
    "getWellknownPolicy" => discovery::get_wellknown_policy,
    "getTurnServer" => discovery::get_turn_server,
    "getCapabilities" => discovery::get_capabilities,
    "register" => account::register,
    "checkUsernameAvailability" => account::check_username_availability,
    "getLoginFlows" => account::get_login_flows,
    "redirectToSSO" => sso::redirect_to_sso,
    "redirectToIdP" => sso::redirect_to_id_p,
    "login" => account::login,
    "logout" => account::logout,
    "logout_all" => account::logout_all,
    "getTokenOwner" => account::get_token_owner,
    "changePassword" => account::change_password,
    "deactivateAccount" => account::deactivate_account,
    "getDevices" => account::get_devices,
    "getDevice" => account::get_device,
    "updateDevice" => account::update_device,
    "deleteDevice" => account::delete_device,
    "deleteDevices" => account::delete_devices,
    "getUserProfile" => profile::get_user_profile,
    "getProfileField" => profile::get_profile_field,
    "setProfileField" => profile::set_profile_field,
    "createRoom" => rooms::create_room,
    "joinRoomById" => rooms::join_room_by_id,
    "joinRoom" => rooms::join_room,
    "inviteUser" => rooms::invite_user,
    "leaveRoom" => rooms::leave_room,
    "forgetRoom" => rooms::forget_room,
    "kick" => rooms::kick,
    "ban" => rooms::ban,
    "unban" => rooms::unban,
    "knockRoom" => rooms::knock_room,
    "getJoinedRooms" => rooms::get_joined_rooms,
    "sendMessage" => events::send_message,
    "setRoomStateWithKey" => events::set_room_state_with_key,
    "getRoomStateWithKey" => events::get_room_state_with_key,
    "getRoomState" => events::get_room_state,
    "getOneRoomEvent" => events::get_one_room_event,
    "redactEvent" => events::redact_event,
    "getRoomEvents" => events::get_room_events,
    "getEventContext" => events::get_event_context,
    "getMembersByRoom" => events::get_members_by_room,
    "getJoinedMembersByRoom" => events::get_joined_members_by_room,
    "sync" => sync::sync,
    "defineFilter" => user_data::define_filter,
    "getFilter" => user_data::get_filter,
    "setAccountData" => user_data::set_account_data,
    "getAccountData" => user_data::get_account_data,
    "setAccountDataPerRoom" => user_data::set_account_data_per_room,
    "getAccountDataPerRoom" => user_data::get_account_data_per_room,
    "getRoomTags" => user_data::get_room_tags,
    "setRoomTag" => user_data::set_room_tag,
    "deleteRoomTag" => user_data::delete_room_tag,
    "setTyping" => user_data::set_typing,
    "postReceipt" => user_data::post_receipt,
    "setReadMarker" => user_data::set_read_marker,
    "setRoomAlias" => directory::set_room_alias,
    "getRoomIdByAlias" => directory::get_room_id_by_alias,
    "deleteRoomAlias" => directory::delete_room_alias,
    "getLocalAliases" => directory::get_local_aliases,
    "getRoomVisibilityOnDirectory" => directory::get_room_visibility_on_directory,
    "setRoomVisibilityOnDirectory" => directory::set_room_visibility_on_directory,
    "getPublicRooms" => directory::get_public_rooms,
    "queryPublicRooms" => directory::query_public_rooms,
    "uploadKeys" => keys::upload_keys,
    "queryKeys" => keys::query_keys,
    "claimKeys" => keys::claim_keys,
    "getKeysChanges" => keys::get_keys_changes,
    "sendToDevice" => keys::send_to_device,
    "uploadContent" => media::upload_content,
    "getContentAuthed" => media::get_content_authed,
    "getContentOverrideNameAuthed" => media::get_content_override_name_authed,
    "getContentThumbnailAuthed" => media::get_content_thumbnail_authed,
    "getConfigAuthed" => media::get_config_authed,
    "getContent" => media::get_content,
    "getContentOverrideName" => media::get_content_override_name,
    "getContentThumbnail" => media::get_content_thumbnail,
    "getConfig" => media::get_config,
    "getUrlPreview" => preview::get_url_preview,
    "getUrlPreviewAuthed" => preview::get_url_preview_authed,
    "getPushRules" => pushrules::get_push_rules,
    "getPushRulesGlobal" => pushrules::get_push_rules_global,
    "getPushRule" => pushrules::get_push_rule,
    "deletePushRule" => pushrules::delete_push_rule,
    "setPushRule" => pushrules::set_push_rule,
    "isPushRuleEnabled" => pushrules::is_push_rule_enabled,
    "setPushRuleEnabled" => pushrules::set_push_rule_enabled,
    "getPushRuleActions" => pushrules::get_push_rule_actions,
    "setPushRuleActions" => pushrules::set_push_rule_actions,
    "setPresence" => presence::set_presence,
    "getPresence" => presence::get_presence,
    "searchUserDirectory" => users::search_user_directory,
    "getMutualRooms" => mutual_rooms::get_mutual_rooms,
    "getRelatingEvents" => relations::get_relating_events,
    "getRelatingEventsWithRelType" => relations::get_relating_events_with_rel_type,
    "getRelatingEventsWithRelTypeAndEventType" => relations::get_relating_events_with_rel_type_and_event_type,
    "getThreadRoots" => relations::get_thread_roots,
    "postRoomKeysVersion" => backup::post_room_keys_version,
    "getRoomKeysVersionCurrent" => backup::get_room_keys_version_current,
    "getRoomKeysVersion" => backup::get_room_keys_version,
    "putRoomKeysVersion" => backup::put_room_keys_version,
    "deleteRoomKeysVersion" => backup::delete_room_keys_version,
    "putRoomKeyBySessionId" => backup::put_room_key_by_session_id,
    "getRoomKeyBySessionId" => backup::get_room_key_by_session_id,
    "deleteRoomKeyBySessionId" => backup::delete_room_key_by_session_id,
    "putRoomKeysByRoomId" => backup::put_room_keys_by_room_id,
    "getRoomKeysByRoomId" => backup::get_room_keys_by_room_id,
    "deleteRoomKeysByRoomId" => backup::delete_room_keys_by_room_id,
    "putRoomKeys" => backup::put_room_keys,
    "getRoomKeys" => backup::get_room_keys,
    "deleteRoomKeys" => backup::delete_room_keys,
    "getPushers" => pusher::get_pushers,
    "postPusher" => pusher::post_pusher,
    "getNotifications" => notifications::get_notifications,
    "requestOpenIdToken" => openid::request_open_id_token,
    "reportRoom" => report_content::report_room,
    "reportEvent" => report_content::report_event,
    "reportUser" => report_content::report_user,
    "getWhoIs" => admin::get_who_is,
    "getAdminLockUser" => admin::get_admin_lock_user,
    "setAdminLockUser" => admin::set_admin_lock_user,
    "getAdminSuspendUser" => admin::get_admin_suspend_user,
    "setAdminSuspendUser" => admin::set_admin_suspend_user,
    "getAccount3PIDs" => threepid::get_account3_pi_ds,
    "requestTokenToRegisterEmail" => threepid::request_token_to_register_email,
    "requestTokenTo3PIDEmail" => threepid::request_token_to3_pid_email,
    "requestTokenToResetPasswordEmail" => threepid::request_token_to_reset_password_email,
    "requestTokenToRegisterMSISDN" => threepid::request_token_to_register_msisdn,
    "requestTokenTo3PIDMSISDN" => threepid::request_token_to3_pid_msisdn,
    "requestTokenToResetPasswordMSISDN" => threepid::request_token_to_reset_password_msisdn,
    "add3PID" => threepid::add3_pid,
    "post3PIDs" => threepid::post3_pi_ds,
    "delete3pidFromAccount" => threepid::delete3pid_from_account,
    "bind3PID" => identity::bind3_pid,
    "unbind3pidFromAccount" => identity::unbind3pid_from_account,
    "inviteBy3PID" => identity::invite_by3_pid,
    "getProtocols" => bridges::get_protocols,
    "getProtocolMetadata" => bridges::get_protocol_metadata,
    "queryLocationByProtocol" => bridges::query_location_by_protocol,
    "queryUserByProtocol" => bridges::query_user_by_protocol,
    "queryLocationByAlias" => bridges::query_location_by_alias,
    "queryUserByID" => bridges::query_user_by_id,
    "pingAppservice" => bridges::ping_appservice,
    "updateAppserviceRoomDirectoryVisibility" => bridges::update_appservice_room_directory_visibility,
    "getEventByTimestamp" => room_event_by_timestamp::get_event_by_timestamp,
    "getRoomSummary" => room_summary::get_room_summary,
    "search" => search::search,
    "createContent" => media::create_content,
    "uploadContentToMXC" => media::upload_content_to_mxc,
    "deleteProfileField" => profile::delete_profile_field,
    "upgradeRoom" => room_upgrades::upgrade_room,
    "getSpaceHierarchy" => space_hierarchy::get_space_hierarchy,
    "uploadCrossSigningKeys" => keys::upload_cross_signing_keys,
    "uploadCrossSigningSignatures" => keys::upload_cross_signing_signatures,
    "roomInitialSync" => legacy::room_initial_sync,
    "getOneEvent" => legacy::get_one_event,
    "initialSync" => legacy::initial_sync,
    "getEvents" => legacy::get_events,
    "peekEvents" => legacy::peek_events,
    "registrationTokenValidity" => account::registration_token_validity,
    "refresh" => account::refresh,
    "generateLoginToken" => account::generate_login_token,
}

/// `Ok(v)` for a `Value` the handler built.
pub fn ok(v: Value) -> ApiResult<Value> {
    Ok(v)
}

/// The caller may only act for itself on `/user/{userId}/...` routes.
pub fn require_self(ctx: &Ctx, user_id: &str) -> ApiResult<()> {
    if ctx.me()?.user_id != user_id {
        return Err(ApiError::forbidden("you cannot act for another user"));
    }
    Ok(())
}
