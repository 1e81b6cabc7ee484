// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title MorToken
/// @notice Stand-in for the MOR ERC-20 on local and test chains. Production uses the real MOR
///         token, which has no public mint; never deploy this contract to a public network.
contract MorToken is ERC20, Ownable {
    /// @param initialSupply Amount (18 decimals) minted to the deployer.
    constructor(uint256 initialSupply) ERC20("Morpheus", "MOR") Ownable(msg.sender) {
        _mint(msg.sender, initialSupply);
    }

    /// @notice Mint `amount` to `to` (local/test chains only).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
