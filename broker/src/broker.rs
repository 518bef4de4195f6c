//! The broker node's front: starts the partitions and turns each client
//! command into calls on the partitions that own its data.
//!
//! Both the internal gRPC API ([`crate::grpc`]) and a gateway embedding the
//! broker call [`Broker::execute`] and [`Broker::open_session`], so the
//! embedded single-node server and the two-process form run the same code.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use imsg_proto::v1::{
    AddConversationMembersResponse, Caller, GetConversationResponse, GetPresenceResponse, GetSettingsResponse,
    LeaveConversationResponse, ListConversationsResponse, RemoveConversationMemberResponse, UpdateConversationResponse,
    UpdateSettingsResponse, create_conversation_request, execute_request, execute_response,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    config::BrokerConfig,
    error::{Error, Result},
    ids::{PartitionId, direct_conversation_id, group_conversation_id},
    partition::{Command, Mailbox, MarkKind, MembershipChange, NewConversation, Partition, Reply, UserContext, Viewer},
    router::{PartitionQueues, Router},
    session::{SessionFields, SessionStream},
    storage::Store,
    validate,
};

/// A running broker node. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: BrokerConfig,
    store: Arc<Store>,
    router: Router,
    partitions: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    leases: DashMap<String, Instant>,
    next_session: AtomicU64,
    stop: CancellationToken,
}

impl Broker {
    /// Opens the data directory and starts every partition.
    pub async fn open(config: BrokerConfig) -> Result<Self> {
        config.validate().map_err(Error::FailedPrecondition)?;
        let store = Store::open(&config)?;
        let mut queues = Vec::new();
        let mut mailboxes = Vec::new();
        for _ in 0..config.partitions {
            let (commands_tx, commands) = mpsc::channel(config.limits.partition_queue);
            let (internal_tx, internal) = mpsc::unbounded_channel();
            queues.push(PartitionQueues { commands: commands_tx, internal: internal_tx });
            mailboxes.push(Mailbox { commands, internal });
        }
        let router = Router::new(queues);
        let mut tasks = Vec::new();
        for (id, mailbox) in mailboxes.into_iter().enumerate() {
            let id = id as PartitionId;
            let partition = Partition::load(
                id,
                config.limits.clone(),
                store.partition(id)?,
                store.durability().clone(),
                router.clone(),
            )?;
            tasks.push(tokio::spawn(partition.run(mailbox)));
        }
        let inner = Arc::new(Inner {
            config,
            store,
            router,
            partitions: std::sync::Mutex::new(tasks),
            leases: DashMap::new(),
            next_session: AtomicU64::new(1),
            stop: CancellationToken::new(),
        });
        tokio::spawn(reap_leases(Arc::downgrade(&inner)));
        tracing::info!(
            data_dir = %inner.config.data_dir.display(),
            partitions = inner.config.partitions,
            fsync = ?inner.config.fsync,
            "broker started"
        );
        Ok(Self { inner })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Storage rows written since start (see [`Store::rows_written`]).
    pub fn rows_written(&self) -> u64 {
        self.inner.store.rows_written()
    }

    fn partition_of(&self, key: &str) -> PartitionId {
        self.inner.router.partition_of(key)
    }

    /// Submits a client command to a partition and waits for its answer.
    async fn call<T>(&self, partition: PartitionId, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.inner.router.submit(partition, make(reply))?;
        answer.await.map_err(|_| Error::Unavailable(format!("partition {partition} stopped")))?
    }

    async fn user_context(&self, user_id: &str) -> Result<UserContext> {
        let user_id = user_id.to_owned();
        self.call(self.partition_of(&user_id), |reply| Command::UserContext { user_id, reply }).await
    }

    async fn viewer(&self, caller: &Caller) -> Result<Viewer> {
        let context = self.user_context(&caller.user_id).await?;
        Ok(Viewer { user_id: caller.user_id.clone(), hide_read_receipts: context.settings.hide_read_receipts })
    }

    /// Runs one client command as `caller` (already authenticated).
    pub async fn execute(
        &self,
        caller: &Caller,
        command: execute_request::Command,
    ) -> Result<execute_response::Result> {
        use execute_request::Command as C;
        use execute_response::Result as R;
        validate::command(&self.inner.config.limits, caller, &command)?;
        let caller = caller.clone();
        Ok(match command {
            C::CreateConversation(request) => {
                let (conversation_id, spec) = match request.kind {
                    Some(create_conversation_request::Kind::Direct(direct)) => (
                        direct_conversation_id(&caller.user_id, &direct.peer_user_id),
                        NewConversation::Direct { peer_user_id: direct.peer_user_id },
                    ),
                    Some(create_conversation_request::Kind::Group(group)) => (
                        group_conversation_id(&caller.user_id, &request.request_id),
                        NewConversation::Group { title: group.title, member_ids: group.member_ids },
                    ),
                    None => return Err(Error::invalid("kind", "set `direct` or `group`")),
                };
                let partition = self.partition_of(&conversation_id);
                R::CreateConversation(
                    self.call(partition, |reply| Command::CreateConversation { caller, conversation_id, spec, reply })
                        .await?,
                )
            }
            C::GetConversation(request) => {
                let viewer = self.viewer(&caller).await?;
                let conversation_id = request.conversation_id;
                let partition = self.partition_of(&conversation_id);
                let conversation =
                    self.call(partition, |reply| Command::GetConversation { viewer, conversation_id, reply }).await?;
                R::GetConversation(GetConversationResponse { conversation: Some(conversation) })
            }
            C::ListConversations(request) => R::ListConversations(self.list_conversations(&caller, &request).await?),
            C::UpdateConversation(request) => {
                let change = MembershipChange::Title(request.title);
                let conversation = self.change(caller, request.conversation_id, change).await?;
                R::UpdateConversation(UpdateConversationResponse { conversation: Some(conversation) })
            }
            C::AddConversationMembers(request) => {
                let change = MembershipChange::Add(request.user_ids);
                let conversation = self.change(caller, request.conversation_id, change).await?;
                R::AddConversationMembers(AddConversationMembersResponse { conversation: Some(conversation) })
            }
            C::RemoveConversationMember(request) => {
                let change = MembershipChange::Remove(request.user_id);
                let conversation = self.change(caller, request.conversation_id, change).await?;
                R::RemoveConversationMember(RemoveConversationMemberResponse { conversation: Some(conversation) })
            }
            C::LeaveConversation(request) => {
                let change = MembershipChange::Remove(caller.user_id.clone());
                self.change(caller, request.conversation_id, change).await?;
                R::LeaveConversation(LeaveConversationResponse {})
            }
            C::SendMessage(request) => {
                let partition = self.partition_of(&request.conversation_id);
                R::SendMessage(self.call(partition, |reply| Command::Send { caller, request, reply }).await?)
            }
            C::ListMessages(request) => {
                let partition = self.partition_of(&request.conversation_id);
                R::ListMessages(self.call(partition, |reply| Command::ListMessages { caller, request, reply }).await?)
            }
            C::GetSettings(_) => {
                let context = self.user_context(&caller.user_id).await?;
                R::GetSettings(GetSettingsResponse { settings: Some(context.settings) })
            }
            C::UpdateSettings(request) => {
                let user_id = caller.user_id.clone();
                let partition = self.partition_of(&user_id);
                let settings =
                    self.call(partition, |reply| Command::UpdateSettings { user_id, request, reply }).await?;
                R::UpdateSettings(UpdateSettingsResponse { settings: Some(settings) })
            }
            C::GetPresence(request) => R::GetPresence(self.presence(&caller, request.user_ids).await?),
            C::Typing(signal) => {
                let conversation_id = signal.conversation_id;
                let active = signal.active;
                let partition = self.partition_of(&conversation_id);
                self.call(partition, |reply| Command::Typing { caller, conversation_id, active, reply }).await?;
                R::Accepted(imsg_proto::v1::Accepted {})
            }
            C::MarkDelivered(mark) => {
                self.mark(caller, mark.conversation_id, mark.seq, MarkKind::Delivered).await?;
                R::Accepted(imsg_proto::v1::Accepted {})
            }
            C::MarkRead(mark) => {
                self.mark(caller, mark.conversation_id, mark.seq, MarkKind::Read).await?;
                R::Accepted(imsg_proto::v1::Accepted {})
            }
        })
    }

    async fn change(
        &self,
        caller: Caller,
        conversation_id: String,
        change: MembershipChange,
    ) -> Result<imsg_proto::v1::Conversation> {
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::ChangeMembership { caller, conversation_id, change, reply }).await
    }

    async fn mark(&self, caller: Caller, conversation_id: String, seq: u64, kind: MarkKind) -> Result<()> {
        // The reader's setting comes from their own partition, not the request.
        let hide_read = self.user_context(&caller.user_id).await?.settings.hide_read_receipts;
        let partition = self.partition_of(&conversation_id);
        self.call(partition, |reply| Command::Mark { caller, conversation_id, seq, kind, hide_read, reply }).await
    }

    async fn list_conversations(
        &self,
        caller: &Caller,
        request: &imsg_proto::v1::ListConversationsRequest,
    ) -> Result<ListConversationsResponse> {
        let page_size = validate::page_size(request.page_size)?;
        let offset = validate::page_token(&request.page_token)?.unwrap_or(0) as usize;
        let context = self.user_context(&caller.user_id).await?;
        let viewer =
            Viewer { user_id: caller.user_id.clone(), hide_read_receipts: context.settings.hide_read_receipts };
        let mut summaries = Vec::new();
        for (partition, conversation_ids) in self.inner.router.group_by_partition(context.conversation_ids.iter()) {
            let viewer = viewer.clone();
            summaries
                .extend(self.call(partition, |reply| Command::Summaries { viewer, conversation_ids, reply }).await?);
        }
        let activity = |s: &imsg_proto::v1::ConversationSummary| {
            s.conversation.as_ref().map(|c| (c.last_activity_ms, c.conversation_id.clone())).unwrap_or_default()
        };
        summaries.sort_by_key(|s| std::cmp::Reverse(activity(s)));
        let total = summaries.len();
        let page: Vec<_> = summaries.into_iter().skip(offset).take(page_size).collect();
        let next = offset + page.len();
        Ok(ListConversationsResponse {
            conversations: page,
            next_page_token: if next < total { next.to_string() } else { String::new() },
        })
    }

    async fn presence(&self, caller: &Caller, user_ids: Vec<String>) -> Result<GetPresenceResponse> {
        let context = self.user_context(&caller.user_id).await?;
        // Reciprocal: who hides their activity sees nobody's.
        if context.settings.hide_activity_status {
            return Ok(GetPresenceResponse { presences: Vec::new() });
        }
        let others = user_ids.iter().filter(|u| **u != caller.user_id);
        let mut presences = Vec::new();
        for (partition, user_ids) in self.inner.router.group_by_partition(others) {
            let viewer_conversations = context.conversation_ids.clone();
            presences.extend(
                self.call(partition, |reply| Command::PresenceQuery { user_ids, viewer_conversations, reply }).await?,
            );
        }
        presences.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(GetPresenceResponse { presences })
    }

    /// Opens a device session: replay after `cursor`, then live events.
    /// `gateway_id` ties it to a gateway lease (empty: no lease, for a
    /// gateway in the same process).
    pub fn open_session(&self, caller: &Caller, gateway_id: &str, cursor: u64) -> Result<SessionStream> {
        validate::id("caller.user_id", &caller.user_id)?;
        validate::id("caller.device_id", &caller.device_id)?;
        if !gateway_id.is_empty() {
            validate::id("gateway_id", gateway_id)?;
            self.renew_lease(gateway_id);
        }
        if self.inner.stop.is_cancelled() {
            return Err(Error::Unavailable("broker is shutting down".into()));
        }
        let fields = SessionFields {
            session_id: self.inner.next_session.fetch_add(1, Ordering::Relaxed),
            user_id: caller.user_id.clone(),
            gateway_id: gateway_id.to_owned(),
        };
        Ok(SessionStream::open(self.inner.router.clone(), fields, cursor, self.inner.config.limits.session_queue))
    }

    /// Extends a gateway's lease; returns how long it lasts.
    pub fn renew_lease(&self, gateway_id: &str) -> Duration {
        let ttl = self.inner.config.limits.lease_ttl;
        self.inner.leases.insert(gateway_id.to_owned(), Instant::now() + ttl);
        ttl
    }

    /// Stops every partition after making their work durable, then syncs
    /// and closes storage. Live sessions end with a goodbye.
    pub async fn shutdown(self) -> Result<()> {
        self.inner.stop.cancel();
        let mut stopped = Vec::new();
        for partition in 0..self.inner.router.partition_count() {
            let (reply, done) = oneshot::channel();
            if self.inner.router.internal(partition, Command::Shutdown { reply }) {
                stopped.push(done);
            }
        }
        for done in stopped {
            let _ = done.await;
        }
        let tasks = std::mem::take(&mut *self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        self.inner.store.close()?;
        tracing::info!("broker stopped; storage synced");
        Ok(())
    }
}

/// Drops the sessions of gateways whose lease ran out, so a gateway that
/// vanished without closing its streams does not keep users online.
async fn reap_leases(inner: std::sync::Weak<Inner>) {
    loop {
        let every = match inner.upgrade() {
            Some(inner) => (inner.config.limits.lease_ttl / 4).max(Duration::from_millis(50)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.stop.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let expired: Vec<String> =
            inner.leases.iter().filter(|lease| *lease.value() <= now).map(|lease| lease.key().clone()).collect();
        for gateway_id in expired {
            inner.leases.remove(&gateway_id);
            tracing::warn!(gateway_id, "gateway lease expired; dropping its sessions");
            inner.router.broadcast(|| Command::DropGateway { gateway_id: gateway_id.clone() });
        }
    }
}
