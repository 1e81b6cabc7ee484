// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";

import {IMarketplace} from "./IMarketplace.sol";

/// @title Marketplace
/// @notice Providers stake MOR and register an endpoint, model owners register models, providers
///         post per-second bids on models, and users open MOR-escrowed sessions against a bid with
///         a provider-signed approval. Closing a session pays the provider for the time used and
///         refunds the rest to the user in the same transaction; for every session,
///         escrow in == paid to provider + refunded to user + held (disputed, claimable later).
/// @dev Gas notes (openSession / closeSession are the hot paths):
///      - A session is two storage slots written once at open: (user, openedAt, bidSerial) and
///        (stake, closedAt, releaseAt, flags). The bid is referenced by a 48-bit serial instead of
///        its 32-byte id; provider, modelId and price are read from the bid, and endsAt is derived
///        as openedAt + stake / price (the price of a bid never changes).
///      - The provider's session index length lives in the provider's packed slot, so the first
///        session of a provider does not pay for a fresh length slot.
///      - Statistics are two packed slots per (provider, model), sized so they cannot overflow.
///      - The reentrancy guard uses transient storage (EIP-1153; the build targets cancun).
contract Marketplace is IMarketplace, Ownable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using EnumerableSet for EnumerableSet.Bytes32Set;
    using EnumerableSet for EnumerableSet.AddressSet;

    // ------------------------------------------------------------------ storage types

    /// @dev slot 0: stake | createdAt | sessionCount | deleted; slot 1: endpoint.
    struct ProviderData {
        uint128 stake;
        uint48 createdAt;
        uint64 sessionCount;
        bool deleted;
        string endpoint;
    }

    /// @dev slot 0: owner | createdAt | deleted; slot 1: stake; then ids, name, tags.
    struct ModelData {
        address owner;
        uint48 createdAt;
        bool deleted;
        uint128 stake;
        bytes32 baseModelId;
        bytes32 ipfsCID;
        string name;
        string[] tags;
    }

    /// @dev slot 0: provider | price (read by open and close); slot 1: serial | createdAt |
    ///      deletedAt | nonce (read by open); slot 2: modelId (read by close).
    struct BidData {
        address provider;
        uint96 pricePerSecond;
        uint48 serial;
        uint48 createdAt;
        uint48 deletedAt;
        uint64 nonce;
        bytes32 modelId;
    }

    /// @dev slot 0: user | openedAt | bidSerial; slot 1: stake | closedAt | releaseAt | flags.
    struct SessionData {
        address user;
        uint48 openedAt;
        uint48 bidSerial;
        uint128 stake;
        uint48 closedAt;
        uint48 releaseAt;
        uint8 flags;
    }

    uint8 private constant _DISPUTED = 1;
    uint8 private constant _CLAIMED = 2;
    uint256 private constant _APPROVAL_LENGTH = 4 * 32;
    uint256 private constant _RECEIPT_LENGTH = 7 * 32;

    /// @inheritdoc IMarketplace
    uint256 public constant APPROVAL_FUTURE_TOLERANCE = 60;

    IERC20 private immutable _mor;

    // Parameters, packed by the function that reads them. approvalTtl and the duration bounds
    // share slot 0 with Ownable's owner, so openSession pays one cold read for all three;
    // disputeWindow (read only by disputed closes) shares slot 1 with bidFee (postModelBid).
    uint32 public approvalTtl;
    uint32 public minSessionDuration;
    uint32 public maxSessionDuration;
    uint32 public disputeWindow;
    uint128 public bidFee;

    uint128 public providerMinStake;
    uint128 public modelMinStake;

    uint96 public minPricePerSecond;
    uint96 public maxPricePerSecond;

    address public feeRecipient;
    uint48 private _bidCount; // last bid serial handed out; serials start at 1

    mapping(address provider => ProviderData) private _providers;
    mapping(bytes32 modelId => ModelData) private _models;
    mapping(bytes32 bidId => BidData) private _bids;
    mapping(uint48 serial => bytes32 bidId) private _bidIdBySerial;
    mapping(address provider => mapping(bytes32 modelId => bytes32 bidId)) private _latestBid;
    mapping(bytes32 sessionId => SessionData) private _sessions;
    mapping(address provider => mapping(bytes32 modelId => ProviderModelStats)) private _stats;

    EnumerableSet.AddressSet private _activeProviders;
    EnumerableSet.Bytes32Set private _activeModels;
    mapping(bytes32 modelId => EnumerableSet.Bytes32Set) private _modelBids;
    mapping(address provider => EnumerableSet.Bytes32Set) private _providerBids;
    mapping(address user => bytes32[]) private _userSessions;
    mapping(address provider => mapping(uint256 index => bytes32 sessionId)) private _providerSessions;

    /// @param morToken_ The MOR ERC-20 used for stakes, fees and session escrow.
    /// @param feeRecipient_ Receives bid fees.
    constructor(address morToken_, address feeRecipient_) Ownable(msg.sender) {
        if (morToken_ == address(0)) revert ZeroAddress();
        _mor = IERC20(morToken_);
        setFeeRecipient(feeRecipient_);
        setProviderMinStake(0.2e18);
        setModelMinStake(0.1e18);
        setBidFee(0.3e18);
        setPriceBounds(1e10, 1e20);
        setApprovalTtl(600);
        setSessionDurationBounds(300, 7 days);
        setDisputeWindow(1 days);
    }

    // ================================================================== providers

    /// @notice Register as a provider or top up the stake and update the endpoint. Pulls `amount`
    ///         MOR. A new (or previously deregistered) provider needs a total stake of at least
    ///         `providerMinStake`; an active provider may pass `amount == 0` to change the endpoint.
    function providerRegister(uint256 amount, string calldata endpoint) external nonReentrant {
        if (bytes(endpoint).length == 0) revert EmptyEndpoint();
        ProviderData storage p = _providers[msg.sender];
        uint256 current = p.stake;
        if (amount > type(uint128).max - current) revert AmountTooLarge(amount);
        uint256 stake = current + amount;
        if (p.createdAt == 0 || p.deleted) {
            uint256 minStake = providerMinStake;
            if (stake < minStake) revert StakeTooLow(minStake, stake);
            if (p.createdAt == 0) p.createdAt = uint48(block.timestamp);
            p.deleted = false;
            _activeProviders.add(msg.sender);
        }
        p.stake = uint128(stake);
        p.endpoint = endpoint;
        emit ProviderRegistered(msg.sender);
        if (amount != 0) _mor.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Leave the market and get the whole stake back. Delete all bids first. Open
    ///         sessions are unaffected and can still be closed and paid.
    function providerDeregister() external nonReentrant {
        ProviderData storage p = _providers[msg.sender];
        if (p.createdAt == 0 || p.deleted) revert ProviderNotRegistered();
        if (_providerBids[msg.sender].length() != 0) revert ProviderHasActiveBids();
        uint256 stake = p.stake;
        p.stake = 0;
        p.deleted = true;
        _activeProviders.remove(msg.sender);
        emit ProviderDeregistered(msg.sender);
        if (stake != 0) _mor.safeTransfer(msg.sender, stake);
    }

    // ================================================================== models

    /// @notice Register a model, or update its name, tags and CID and add stake. The id is
    ///         `keccak256(abi.encodePacked(msg.sender, baseModelId))`, so only its owner can
    ///         update it. A new (or deregistered) model needs a stake of at least `modelMinStake`.
    function modelRegister(
        bytes32 baseModelId,
        bytes32 ipfsCID,
        uint256 amount,
        string calldata name,
        string[] calldata tags
    ) external nonReentrant returns (bytes32 modelId) {
        if (bytes(name).length == 0) revert EmptyModelName();
        modelId = keccak256(abi.encodePacked(msg.sender, baseModelId));
        ModelData storage m = _models[modelId];
        uint256 current = m.stake;
        if (amount > type(uint128).max - current) revert AmountTooLarge(amount);
        uint256 stake = current + amount;
        if (m.createdAt == 0 || m.deleted) {
            uint256 minStake = modelMinStake;
            if (stake < minStake) revert StakeTooLow(minStake, stake);
            if (m.createdAt == 0) {
                m.owner = msg.sender;
                m.createdAt = uint48(block.timestamp);
                m.baseModelId = baseModelId;
            }
            m.deleted = false;
            _activeModels.add(modelId);
        }
        m.stake = uint128(stake);
        m.ipfsCID = ipfsCID;
        m.name = name;
        m.tags = tags;
        emit ModelRegistered(msg.sender, modelId);
        if (amount != 0) _mor.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Deregister an owned model (no active bids may reference it) and refund its stake.
    function modelDeregister(bytes32 modelId) external nonReentrant {
        ModelData storage m = _models[modelId];
        if (m.createdAt == 0 || m.deleted) revert ModelNotActive(modelId);
        if (m.owner != msg.sender) revert NotModelOwner();
        if (_modelBids[modelId].length() != 0) revert ModelHasActiveBids();
        uint256 stake = m.stake;
        m.stake = 0;
        m.deleted = true;
        _activeModels.remove(modelId);
        emit ModelDeregistered(msg.sender, modelId);
        if (stake != 0) _mor.safeTransfer(msg.sender, stake);
    }

    // ================================================================== bids

    /// @notice Offer `modelId` at `pricePerSecond` MOR wei. Pulls `bidFee` to `feeRecipient` and
    ///         replaces (deletes) the caller's previous active bid on the same model.
    ///         `bidId = keccak256(abi.encodePacked(provider, modelId, uint256(nonce)))` with a
    ///         nonce counting the bids of this provider on this model from 0.
    function postModelBid(bytes32 modelId, uint256 pricePerSecond)
        external
        nonReentrant
        returns (bytes32 bidId)
    {
        ProviderData storage p = _providers[msg.sender];
        if (p.createdAt == 0 || p.deleted) revert ProviderNotRegistered();
        ModelData storage m = _models[modelId];
        if (m.createdAt == 0 || m.deleted) revert ModelNotActive(modelId);
        uint256 minPrice = minPricePerSecond;
        uint256 maxPrice = maxPricePerSecond;
        if (pricePerSecond < minPrice || pricePerSecond > maxPrice) {
            revert PriceOutOfRange(pricePerSecond, minPrice, maxPrice);
        }

        uint64 nonce;
        bytes32 previous = _latestBid[msg.sender][modelId];
        if (previous != bytes32(0)) {
            BidData storage prev = _bids[previous];
            nonce = prev.nonce + 1;
            if (prev.deletedAt == 0) _deleteBid(previous, prev, msg.sender);
        }
        bidId = keccak256(abi.encodePacked(msg.sender, modelId, uint256(nonce)));
        uint48 serial = _bidCount + 1;
        _bidCount = serial;
        _bids[bidId] = BidData({
            provider: msg.sender,
            pricePerSecond: uint96(pricePerSecond), // <= maxPricePerSecond, a uint96
            serial: serial,
            createdAt: uint48(block.timestamp),
            deletedAt: 0,
            nonce: nonce,
            modelId: modelId
        });
        _bidIdBySerial[serial] = bidId;
        _latestBid[msg.sender][modelId] = bidId;
        _modelBids[modelId].add(bidId);
        _providerBids[msg.sender].add(bidId);
        emit BidPosted(msg.sender, modelId, bidId);

        uint256 fee = bidFee;
        if (fee != 0) _mor.safeTransferFrom(msg.sender, feeRecipient, fee);
    }

    /// @notice Withdraw an active bid (its provider, or the contract owner). Sessions already
    ///         opened on it run on.
    function deleteModelBid(bytes32 bidId) external {
        BidData storage b = _bids[bidId];
        if (b.createdAt == 0 || b.deletedAt != 0) revert BidNotActive(bidId);
        address provider = b.provider;
        if (msg.sender != provider && msg.sender != owner()) revert NotBidOwner();
        _deleteBid(bidId, b, provider);
    }

    function _deleteBid(bytes32 bidId, BidData storage b, address provider) private {
        b.deletedAt = uint48(block.timestamp);
        bytes32 modelId = b.modelId;
        _modelBids[modelId].remove(bidId);
        _providerBids[provider].remove(bidId);
        emit BidDeleted(provider, modelId, bidId);
    }

    // ================================================================== sessions

    /// @notice Open a session on the bid named in `approval`, escrowing `amount` MOR from the
    ///         caller; the session lasts `amount / pricePerSecond` seconds.
    /// @param approval abi.encode(bytes32 bidId, uint256 chainId, address user, uint128 timestamp)
    ///        issued by the bid's provider; timestamp in seconds, at most `approvalTtl` old and at
    ///        most `APPROVAL_FUTURE_TOLERANCE` ahead.
    /// @param signature The provider's EIP-191 signature of keccak256(approval).
    /// @return sessionId keccak256(abi.encodePacked(user, provider, bidId, keccak256(approval))).
    /// @dev The approval hash is the session nonce. Every input of the id is fixed by the signed
    ///      approval (user == msg.sender == approval.user, provider and bidId come from the bid it
    ///      names), and `approval` must be exactly the 128-byte canonical encoding (abi.decode
    ///      rejects dirty high bits), so one signed approval maps to exactly one session id.
    ///      Session records are never deleted, so replaying an approval finds its session and
    ///      reverts {ApprovalAlreadyUsed}: no separate "used approvals" mapping and no global
    ///      nonce slot are written, saving two storage writes per open. Only `user` can create
    ///      an id containing its own address, so nobody can squat another user's session id.
    function openSession(uint256 amount, bytes calldata approval, bytes calldata signature)
        external
        nonReentrant
        returns (bytes32 sessionId)
    {
        if (approval.length != _APPROVAL_LENGTH) revert InvalidApproval();
        (bytes32 bidId, uint256 chainId, address user, uint128 timestamp) =
            abi.decode(approval, (bytes32, uint256, address, uint128));
        if (chainId != block.chainid) revert WrongChainId(block.chainid, chainId);
        if (user != msg.sender) revert ApprovalForAnotherUser();
        if (uint256(timestamp) + approvalTtl < block.timestamp) revert ApprovalExpired();
        if (timestamp > block.timestamp + APPROVAL_FUTURE_TOLERANCE) revert ApprovalFromFuture();

        BidData storage b = _bids[bidId];
        if (b.createdAt == 0 || b.deletedAt != 0) revert BidNotActive(bidId);
        address provider = b.provider;
        bytes32 approvalHash = keccak256(approval);
        if (_recover(approvalHash, signature) != provider) revert InvalidApprovalSigner();
        if (provider == msg.sender) revert ProviderCannotBeUser();

        // An active bid implies an active provider and model: neither can deregister while it
        // has active bids.
        uint256 duration = amount / b.pricePerSecond;
        if (duration < minSessionDuration || duration > maxSessionDuration) {
            revert SessionDurationOutOfRange(duration);
        }

        sessionId = keccak256(abi.encodePacked(msg.sender, provider, bidId, approvalHash));
        if (_sessions[sessionId].user != address(0)) revert ApprovalAlreadyUsed();
        // amount <= (maxSessionDuration + 1) * pricePerSecond - 1 < 2^32 * 2^96: fits uint128.
        _sessions[sessionId] = SessionData({
            user: msg.sender,
            openedAt: uint48(block.timestamp),
            bidSerial: b.serial,
            stake: uint128(amount),
            closedAt: 0,
            releaseAt: 0,
            flags: 0
        });
        _userSessions[msg.sender].push(sessionId);
        ProviderData storage p = _providers[provider];
        uint64 index = p.sessionCount;
        _providerSessions[provider][index] = sessionId;
        p.sessionCount = index + 1;

        emit SessionOpened(msg.sender, sessionId, provider);
        _mor.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Close a session with a signed receipt
    ///         abi.encode(bytes32 sessionId, uint256 chainId, uint128 timestamp, uint32 tpsX1000,
    ///         uint32 ttftMs, uint64 promptTokens, uint64 completionTokens) and an EIP-191
    ///         signature of its keccak256.
    ///         - The user, with a provider-signed receipt: settled, provider paid now, statistics
    ///           recorded.
    ///         - The user, with a self-signed receipt: disputed, the provider's share is held for
    ///           `disputeWindow` (see {claimForProvider}); only `totalCount` is incremented.
    ///         - The provider (any time, e.g. after `endsAt` or to give up early), with a
    ///           provider-signed receipt: provider paid now; only `totalCount` is incremented.
    ///         The provider earns (min(now, endsAt) - openedAt) * pricePerSecond and the user is
    ///         refunded the rest of the stake in the same transaction.
    function closeSession(bytes calldata receipt, bytes calldata signature) external nonReentrant {
        if (receipt.length != _RECEIPT_LENGTH) revert InvalidReceipt();
        (bytes32 sessionId, uint256 chainId) = abi.decode(receipt[:64], (bytes32, uint256));
        SessionData storage s = _sessions[sessionId];
        address user = s.user;
        if (user == address(0)) revert SessionNotFound(sessionId);
        if (s.closedAt != 0) revert SessionAlreadyClosed(sessionId);
        if (chainId != block.chainid) revert WrongChainId(block.chainid, chainId);

        BidData storage b = _bids[_bidIdBySerial[s.bidSerial]];
        address provider = b.provider;
        address signer = _recover(keccak256(receipt), signature);
        bool endorsed; // user-submitted, provider-signed: counts for statistics
        bool disputed;
        if (msg.sender == user) {
            if (signer == provider) endorsed = true;
            else if (signer == user) disputed = true;
            else revert InvalidReceiptSigner();
        } else if (msg.sender == provider) {
            if (signer != provider) revert InvalidReceiptSigner();
        } else {
            revert NotSessionParty();
        }

        uint256 stake = s.stake;
        uint256 earned = _earned(s.openedAt, stake, b.pricePerSecond, block.timestamp);
        uint256 refund = stake - earned;
        uint256 held;
        s.closedAt = uint48(block.timestamp);
        if (disputed) {
            held = earned;
            s.releaseAt = uint48(block.timestamp + disputeWindow);
            s.flags = _DISPUTED;
        }

        if (endorsed) {
            _recordReceipt(provider, b.modelId, receipt);
        } else {
            _stats[provider][b.modelId].totalCount += 1;
        }

        emit SessionClosed(user, sessionId, provider);
        emit SessionSettled(sessionId, earned, refund, held, disputed);
        if (!disputed && earned != 0) _mor.safeTransfer(provider, earned);
        if (refund != 0) _mor.safeTransfer(user, refund);
    }

    /// @notice Pay the provider its share of a disputed session once `releaseAt` has passed.
    function claimForProvider(bytes32 sessionId) external nonReentrant {
        SessionData storage s = _sessions[sessionId];
        if (s.user == address(0)) revert SessionNotFound(sessionId);
        BidData storage b = _bids[_bidIdBySerial[s.bidSerial]];
        if (msg.sender != b.provider) revert NotSessionProvider();
        uint8 flags = s.flags;
        if (flags != _DISPUTED) revert NothingToClaim(); // open, undisputed or already claimed
        uint256 amount = _earned(s.openedAt, s.stake, b.pricePerSecond, s.closedAt);
        if (amount == 0) revert NothingToClaim();
        uint256 releaseAt = s.releaseAt;
        if (block.timestamp < releaseAt) revert ClaimNotReleased(releaseAt);
        s.flags = flags | _CLAIMED;
        emit ProviderClaimed(msg.sender, sessionId, amount);
        _mor.safeTransfer(msg.sender, amount);
    }

    /// @dev Undisputed, user-submitted receipt. Sizes make overflow impossible below 2^32
    ///      receipts: sums of uint32 values fit 64 bits, sums of their squares fit 96 bits; token
    ///      sums (uint64 inputs) saturate instead, so a provider signing absurd counts can only
    ///      spoil its own statistics, never make the user's close revert.
    function _recordReceipt(address provider, bytes32 modelId, bytes calldata receipt) private {
        (,,, uint32 tps, uint32 ttft, uint64 promptTokens, uint64 completionTokens) =
            abi.decode(receipt, (bytes32, uint256, uint128, uint32, uint32, uint64, uint64));
        ProviderModelStats storage ref = _stats[provider][modelId];
        ProviderModelStats memory st = ref;
        st.totalCount += 1;
        st.successCount += 1;
        st.tpsX1000Sum += tps;
        st.ttftMsSum += ttft;
        st.tpsX1000SqSum += uint96(tps) * tps;
        st.ttftMsSqSum += uint96(ttft) * ttft;
        st.promptTokensSum = _saturatingAdd64(st.promptTokensSum, promptTokens);
        st.completionTokensSum = _saturatingAdd64(st.completionTokensSum, completionTokens);
        _stats[provider][modelId] = st;
    }

    function _saturatingAdd64(uint64 a, uint64 b) private pure returns (uint64) {
        unchecked {
            uint64 c = a + b;
            return c < a ? type(uint64).max : c;
        }
    }

    /// @dev (min(until, endsAt) - openedAt) * price with endsAt = openedAt + stake / price;
    ///      never exceeds stake.
    function _earned(uint256 openedAt, uint256 stake, uint256 price, uint256 until)
        private
        pure
        returns (uint256)
    {
        uint256 endsAt = openedAt + stake / price;
        return ((until < endsAt ? until : endsAt) - openedAt) * price;
    }

    /// @dev EIP-191 signer of `hash`, or address(0) for a malformed or invalid signature.
    function _recover(bytes32 hash, bytes calldata signature) private pure returns (address signer) {
        if (signature.length != 65) return address(0);
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 0x20))
            v := byte(0, calldataload(add(signature.offset, 0x40)))
        }
        if (v < 27) v += 27; // accept both {0,1} and {27,28} recovery ids
        (signer,,) = ECDSA.tryRecover(MessageHashUtils.toEthSignedMessageHash(hash), v, r, s);
    }

    // ================================================================== views

    function morToken() external view returns (address) {
        return address(_mor);
    }

    /// @notice Unknown providers return a zeroed struct (createdAt == 0).
    function getProvider(address provider) external view returns (Provider memory out) {
        ProviderData storage p = _providers[provider];
        out.endpoint = p.endpoint;
        out.stake = p.stake;
        out.createdAt = p.createdAt;
        out.activeBids = _providerBids[provider].length();
        out.sessionCount = p.sessionCount;
        out.isDeleted = p.deleted;
    }

    /// @notice Unknown models return a zeroed struct (createdAt == 0).
    function getModel(bytes32 modelId) external view returns (Model memory out) {
        ModelData storage m = _models[modelId];
        out.owner = m.owner;
        out.baseModelId = m.baseModelId;
        out.ipfsCID = m.ipfsCID;
        out.stake = m.stake;
        out.name = m.name;
        out.tags = m.tags;
        out.createdAt = m.createdAt;
        out.activeBids = _modelBids[modelId].length();
        out.isDeleted = m.deleted;
    }

    /// @notice Unknown bids return a zeroed struct (createdAt == 0).
    function getBid(bytes32 bidId) external view returns (Bid memory out) {
        BidData storage b = _bids[bidId];
        out.provider = b.provider;
        out.modelId = b.modelId;
        out.pricePerSecond = b.pricePerSecond;
        out.nonce = b.nonce;
        out.createdAt = b.createdAt;
        out.deletedAt = b.deletedAt;
    }

    /// @notice Unknown sessions return a zeroed struct (openedAt == 0).
    function getSession(bytes32 sessionId) external view returns (Session memory out) {
        SessionData memory s = _sessions[sessionId];
        if (s.user == address(0)) return out;
        bytes32 bidId = _bidIdBySerial[s.bidSerial];
        BidData storage b = _bids[bidId];
        uint256 price = b.pricePerSecond;
        out.user = s.user;
        out.provider = b.provider;
        out.bidId = bidId;
        out.modelId = b.modelId;
        out.stake = s.stake;
        out.pricePerSecond = price;
        out.openedAt = s.openedAt;
        out.endsAt = uint256(s.openedAt) + s.stake / price;
        out.closedAt = s.closedAt;
        out.releaseAt = s.releaseAt;
        out.disputed = s.flags & _DISPUTED != 0;
        out.claimed = s.flags & _CLAIMED != 0;
        out.closed = s.closedAt != 0;
        if (out.closed) {
            out.providerEarned = _earned(s.openedAt, s.stake, price, s.closedAt);
            out.userRefund = s.stake - out.providerEarned;
            if (out.disputed && !out.claimed) out.held = out.providerEarned;
        }
    }

    function getProviderModelStats(address provider, bytes32 modelId)
        external
        view
        returns (ProviderModelStats memory)
    {
        return _stats[provider][modelId];
    }

    /// @notice The provider's active bid on `modelId`, or bytes32(0).
    function getActiveBidId(address provider, bytes32 modelId) external view returns (bytes32 bidId) {
        bidId = _latestBid[provider][modelId];
        if (bidId != bytes32(0) && _bids[bidId].deletedAt != 0) bidId = bytes32(0);
    }

    /// @notice Order is not stable across deletions (set semantics).
    function getActiveBidsByModel(bytes32 modelId, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total)
    {
        return _page(_modelBids[modelId], offset, limit);
    }

    /// @notice Order is not stable across deletions (set semantics).
    function getActiveBidsByProvider(address provider, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total)
    {
        return _page(_providerBids[provider], offset, limit);
    }

    /// @notice Sessions in opening order.
    function getSessionsByUser(address user, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total)
    {
        bytes32[] storage all = _userSessions[user];
        total = all.length;
        (uint256 start, uint256 end) = _window(total, offset, limit);
        ids = new bytes32[](end - start);
        for (uint256 i = start; i < end; ++i) ids[i - start] = all[i];
    }

    /// @notice Sessions in opening order.
    function getSessionsByProvider(address provider, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total)
    {
        mapping(uint256 => bytes32) storage all = _providerSessions[provider];
        total = _providers[provider].sessionCount;
        (uint256 start, uint256 end) = _window(total, offset, limit);
        ids = new bytes32[](end - start);
        for (uint256 i = start; i < end; ++i) ids[i - start] = all[i];
    }

    /// @notice Active (registered, not deregistered) models. Order is not stable.
    function getModelIds(uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total)
    {
        return _page(_activeModels, offset, limit);
    }

    /// @notice Active (registered, not deregistered) providers. Order is not stable.
    function getProviders(uint256 offset, uint256 limit)
        external
        view
        returns (address[] memory providers, uint256 total)
    {
        total = _activeProviders.length();
        (uint256 start, uint256 end) = _window(total, offset, limit);
        providers = _activeProviders.values(start, end);
    }

    function _page(EnumerableSet.Bytes32Set storage set, uint256 offset, uint256 limit)
        private
        view
        returns (bytes32[] memory ids, uint256 total)
    {
        total = set.length();
        (uint256 start, uint256 end) = _window(total, offset, limit);
        ids = set.values(start, end);
    }

    function _window(uint256 total, uint256 offset, uint256 limit)
        private
        pure
        returns (uint256 start, uint256 end)
    {
        start = offset < total ? offset : total;
        end = limit < total - start ? start + limit : total;
    }

    // ================================================================== owner

    function setProviderMinStake(uint128 amount) public onlyOwner {
        providerMinStake = amount;
        emit ProviderMinStakeUpdated(amount);
    }

    function setModelMinStake(uint128 amount) public onlyOwner {
        modelMinStake = amount;
        emit ModelMinStakeUpdated(amount);
    }

    function setBidFee(uint128 amount) public onlyOwner {
        bidFee = amount;
        emit BidFeeUpdated(amount);
    }

    /// @notice 0 < min <= max. Prices are uint96, which also bounds every session stake to uint128.
    function setPriceBounds(uint96 minPrice, uint96 maxPrice) public onlyOwner {
        if (minPrice == 0 || minPrice > maxPrice) revert InvalidPriceBounds(minPrice, maxPrice);
        minPricePerSecond = minPrice;
        maxPricePerSecond = maxPrice;
        emit PriceBoundsUpdated(minPrice, maxPrice);
    }

    function setFeeRecipient(address recipient) public onlyOwner {
        if (recipient == address(0)) revert ZeroAddress();
        feeRecipient = recipient;
        emit FeeRecipientUpdated(recipient);
    }

    function setApprovalTtl(uint32 ttl) public onlyOwner {
        if (ttl == 0) revert InvalidApprovalTtl();
        approvalTtl = ttl;
        emit ApprovalTtlUpdated(ttl);
    }

    /// @notice 0 < min <= max, in seconds.
    function setSessionDurationBounds(uint32 minDuration, uint32 maxDuration) public onlyOwner {
        if (minDuration == 0 || minDuration > maxDuration) {
            revert InvalidDurationBounds(minDuration, maxDuration);
        }
        minSessionDuration = minDuration;
        maxSessionDuration = maxDuration;
        emit SessionDurationBoundsUpdated(minDuration, maxDuration);
    }

    function setDisputeWindow(uint32 window) public onlyOwner {
        disputeWindow = window;
        emit DisputeWindowUpdated(window);
    }
}
